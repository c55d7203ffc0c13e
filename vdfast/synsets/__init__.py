from vdfast.synsets.base import KINDS, Synset, SynsetError, check_matches, load
from vdfast.synsets.pixel import PixelSynset

__all__ = ["Synset", "PixelSynset", "SynsetError", "KINDS", "load", "check_matches"]
