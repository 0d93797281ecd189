import pytest

from urg_ray.baselines.presets import RANKER_PRESETS
from urg_ray.presets import PRESETS, lookup_preset


def test_lookup_preset_gives_the_preset_none_for_a_hub_id_and_lists_the_presets_for_a_typo():
    assert lookup_preset(PRESETS, "tiny") is PRESETS["tiny"]
    assert lookup_preset(RANKER_PRESETS, "deberta-v3-large", "ranker preset") is RANKER_PRESETS["deberta-v3-large"]
    assert lookup_preset(PRESETS, "google/flan-t5-base") is None
    with pytest.raises(ValueError, match="unknown ranker preset 'tinny' and no such folder; presets: tiny .*minilm"):
        lookup_preset(RANKER_PRESETS, "tinny", "ranker preset")
