from vdfast.synsets.base import (INITS, KINDS, Synset, SynsetDataset, SynsetError, check_matches, load,
                                 make)
from vdfast.synsets.pixel import PixelSynset
from vdfast.synsets.generated import GeneratedSynset
from vdfast.synsets.static_dynamic import StaticDynamicSynset

__all__ = ["Synset", "SynsetDataset", "PixelSynset", "StaticDynamicSynset", "GeneratedSynset", "SynsetError", "KINDS", "INITS", "load", "make", "check_matches"]
