from vdfast.synsets.base import KINDS, Synset, SynsetDataset, SynsetError, check_matches, load
from vdfast.synsets.pixel import PixelSynset
from vdfast.synsets.generated import GeneratedSynset
from vdfast.synsets.static_dynamic import StaticDynamicSynset

__all__ = ["Synset", "SynsetDataset", "PixelSynset", "StaticDynamicSynset", "GeneratedSynset", "SynsetError", "KINDS", "load", "check_matches"]
