from vdfast.synsets.base import INITS, KINDS, Synset, SynsetError, check_matches, load, make
from vdfast.synsets.pixel import PixelSynset

__all__ = ["Synset", "PixelSynset", "SynsetError", "KINDS", "INITS", "load", "make", "check_matches"]
