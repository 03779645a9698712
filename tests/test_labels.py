import numpy as np
import pytest

from cxr_core.labels import (
    BOX_LABELS,
    LABELS,
    REAL_COUNTS,
    canonical_box_label,
    decode,
    encode,
    encode_column,
    parse_finding_labels,
)


def test_label_order_is_nih_order_not_alphabetical():
    assert LABELS[:3] == ("Atelectasis", "Cardiomegaly", "Effusion")
    assert LABELS[-1] == "Hernia"
    assert len(LABELS) == 14 and list(LABELS) != sorted(LABELS)
    assert LABELS[:8] == BOX_LABELS
    assert sum(REAL_COUNTS.values()) == 81176  # label instances in Data_Entry_2017_v2020


def test_no_finding_is_all_zeros_and_roundtrip():
    assert encode(parse_finding_labels("No Finding")).sum() == 0
    vec = encode(parse_finding_labels("Cardiomegaly|Emphysema"))
    assert np.flatnonzero(vec).tolist() == [1, 10]
    assert decode(vec) == "Cardiomegaly|Emphysema"
    assert decode(np.zeros(14)) == "No Finding"
    assert encode_column(["Hernia", "No Finding"]).tolist()[0][13] == 1


def test_unknown_label_is_named():
    with pytest.raises(ValueError, match="Pneumonitis"):
        parse_finding_labels("Effusion|Pneumonitis")


def test_box_label_alias():
    assert canonical_box_label("Infiltrate") == "Infiltration"
    assert canonical_box_label("Mass") == "Mass"
    with pytest.raises(ValueError, match="Hernia"):
        canonical_box_label("Hernia")


@pytest.mark.parametrize("cell", ["No Finding|Effusion", "Effusion|No Finding", "No Finding|No Finding|Mass"])
def test_no_finding_beside_a_finding_is_refused(cell):
    # NIH's Data_Entry_2017_v2020.csv never mixes them; a cell that does is corrupt, not "no findings"
    with pytest.raises(ValueError, match="together with a finding"):
        parse_finding_labels(cell)
