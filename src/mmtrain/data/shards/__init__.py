"""Packed shards: the layout (:mod:`.layout`), ranged reads from a folder or a URL (:mod:`.store`), the writer
(:mod:`.writer`) and ``mmtrain data pack`` (:mod:`.pack`); the reader is :mod:`mmtrain.data.formats.shards`."""
