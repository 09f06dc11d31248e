"""Video frames as the reference reads them; the implementation lives in `train.frames` (training reads the same
frame folders), re-exported here for the MMEB-V2 video tasks."""

from train.frames import FRAME_SUFFIXES, list_frames, natural_key, sample_frames, sample_indices

__all__ = ["FRAME_SUFFIXES", "list_frames", "natural_key", "sample_frames", "sample_indices"]
