"""The bottom layer: atomic run files (``fileio``) and artifact manifests (``integrity``). Imports
nothing else of mmtrain."""
