"""Dataset formats: one module per on-disk layout, each returning raw-sample dicts.

- :mod:`~mmtrain.data.formats.mp4_label_json` - mp4 + one label JSON per video, a sample per segment
- :mod:`~mmtrain.data.formats.meld` - MELD utterance CSV + ``dia{D}_utt{U}.mp4`` clips
- :mod:`~mmtrain.data.formats.parquet` - streamed parquet with image bytes + caption / QA
- :mod:`~mmtrain.data.formats.image_pairs` - First/Second/Similar image pairs, k-fold pair CSVs
- :mod:`~mmtrain.data.formats.metadata` - audio-text / image-text JSON or JSONL metadata
- :mod:`~mmtrain.data.formats.instruction` - prompt/response JSONL with optional media

Shared parsing (annotation files with located errors, label maps, paths, lazy media) lives in
:mod:`~mmtrain.data.formats.common`. Modules are imported by their full path (``_target_``), so
using one format never imports another's dependencies (pyarrow).
"""
