"""Space-group tables: crystal systems, centrings, absences and extinction groups for all 230."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import spglib

from xrd_nexus_ml.physics import symmetry as sym


def _box(n: int) -> np.ndarray:
    r = range(-n, n + 1)
    return np.array(list(itertools.product(r, r, r)))


def _system_from_point_group(pg: str) -> str:
    """Crystal system from spglib's point-group symbol: an independent route to the same answer."""
    if pg in ("1", "-1"):
        return "triclinic"
    if "6" in pg:
        return "hexagonal"
    if pg.startswith(("3", "-3")):
        return "trigonal"
    if "3" in pg:
        return "cubic"
    if "4" in pg:
        return "tetragonal"
    if pg in ("2", "m", "2/m"):
        return "monoclinic"
    return "orthorhombic"


def test_every_space_group_has_system_centring_symbol_and_extinction_group():
    for sg in range(1, 231):
        system = sym.crystal_system(sg)
        assert system == sym.CRYSTAL_SYSTEMS[sym.crystal_system_index(sg)]
        with sym.quiet_spglib():
            pg = spglib.get_spacegroup_type(sym.hall_number(sg)).pointgroup_international
        assert system == _system_from_point_group(pg), sg
        assert sym.lattice_centering(sg) in "PACIFR"
        assert 0 <= sym.extinction_group(sg) < sym.N_EXTINCTION_GROUPS
        assert sg in sym.extinction_group_members(sym.extinction_group(sg))
    counts = [sum(sym.crystal_system(sg) == s for sg in range(1, 231)) for s in sym.CRYSTAL_SYSTEMS]
    assert counts == [2, 13, 59, 68, 25, 27, 36]


def test_symbols_and_centrings():
    assert sym.space_group_symbol(14) == "P2_1/c"
    assert sym.space_group_symbol(225) == "Fm-3m"
    assert sym.space_group_symbol(166) == "R-3m"
    expected = {1: "P", 5: "C", 38: "A", 63: "C", 69: "F", 71: "I", 146: "R", 166: "R", 191: "P", 225: "F", 229: "I"}
    assert {sg: sym.lattice_centering(sg) for sg in expected} == expected


def test_extinction_groups_partition_the_230_by_crystal_system():
    n = sym.N_EXTINCTION_GROUPS
    assert n == 112
    members = [sym.extinction_group_members(i) for i in range(n)]
    assert sorted(sg for group in members for sg in group) == list(range(1, 231))
    firsts = [group[0] for group in members]
    assert firsts == sorted(firsts)  # numbered by the lowest member
    per_system = dict.fromkeys(sym.CRYSTAL_SYSTEMS, 0)
    for i, group in enumerate(members):
        assert len({sym.crystal_system(sg) for sg in group}) == 1
        assert len({sym.systematic_absences(sg, 4) for sg in group}) == 1
        assert all(sym.extinction_group(sg) == i for sg in group)
        name = sym.extinction_group_name(i)
        assert name.startswith(sym.crystal_system(group[0])) and str(group[-1]) in name
        per_system[sym.crystal_system(group[0])] += 1
    assert list(per_system.values()) == [1, 6, 44, 31, 6, 7, 17]
    assert sym.extinction_group_name(sym.extinction_group(225)) == "cubic F F23 [196, 202, 209, 216, 225]"


@pytest.mark.parametrize(
    "group",
    [
        (1, 2),  # P1, P-1
        (3, 6, 10),  # P2, Pm, P2/m: monoclinic P, no absences
        (4, 11),  # P2_1, P2_1/m
        (5, 8, 12),  # C2, Cm, C2/m
        (7, 13),  # Pc, P2/c
        (9, 15),  # Cc, C2/c
        (14,),  # P2_1/c
        (16, 25, 47),  # P222, Pmm2, Pmmm
        (19,),  # P2_12_12_1
        (23, 24, 44, 71),  # I222, I2_12_12_1, Imm2, Immm
        (61,),  # Pbca
        (62,),  # Pnma
        (76, 78, 91, 95),  # P4_1, P4_3, P4_122, P4_322
        (88,),  # I4_1/a
        (141,),  # I4_1/amd
        (144, 145, 151, 152, 153, 154),  # P3_1, P3_2 and their 12 / 21 variants
        (146, 148, 155, 160, 166),  # R3, R-3, R32, R3m, R-3m
        (161, 167),  # R3c, R-3c
        (169, 170, 178, 179),  # P6_1, P6_5, P6_122, P6_522
        (173, 176, 182),  # P6_3, P6_3/m, P6_322
        (196, 202, 209, 216, 225),  # cubic F, no extra absences
        (197, 199, 204, 211, 217, 229),  # cubic I, no extra absences (I2_13 included)
        (198, 208),  # P2_13, P4_232: 00l l = 2n
        (203, 227),  # Fd-3, Fd-3m
        (210,),  # F4_132
        (212, 213),  # P4_332, P4_132
        (230,),  # Ia-3d alone
    ],
)
def test_known_extinction_groups(group):
    """Groupings read off International Tables A, Table 3.2.3 (standard settings)."""
    assert sym.extinction_group_members(sym.extinction_group(group[0])) == group


def test_grouping_does_not_depend_on_the_hkl_box():
    def grouping(hkl_max):
        keys = {}
        for sg in range(1, 231):
            key = (sym.crystal_system_index(sg), sym._absence_mask(sg, hkl_max).tobytes())
            keys.setdefault(key, []).append(sg)
        return sorted(tuple(v) for v in keys.values())

    assert grouping(8) == [sym.extinction_group_members(i) for i in range(sym.N_EXTINCTION_GROUPS)]


def test_is_allowed_face_and_body_centred_cubic():
    hkl = _box(5)
    h, k, l = hkl.T
    parity = hkl % 2
    all_same = (parity == parity[:, :1]).all(axis=1)
    assert np.array_equal(sym.is_allowed(225, hkl), all_same)
    assert np.array_equal(sym.is_allowed(229, hkl), (h + k + l) % 2 == 0)
    assert sym.is_allowed(1, hkl).all() and sym.is_allowed(2, hkl).all()


def test_is_allowed_p21c_and_r3m():
    hkl = _box(6)
    h, k, l = hkl.T
    allowed = sym.is_allowed(14, hkl)
    expected = np.ones(len(hkl), bool)
    expected[(h == 0) & (l == 0)] = k[(h == 0) & (l == 0)] % 2 == 0  # 0k0: k = 2n
    h0l = k == 0
    expected[h0l] = l[h0l] % 2 == 0  # h0l: l = 2n (00l included)
    assert np.array_equal(allowed, expected)
    assert np.array_equal(sym.is_allowed(166, hkl), (-h + k + l) % 3 == 0)  # obverse R, hexagonal axes


def test_is_allowed_keeps_only_general_position_conditions():
    # Fd-3m: h00 needs h = 4n, but 222 is allowed for the general position (diamond's 222 is
    # extinct only because of the 8a site symmetry).
    assert sym.is_allowed(227, np.array([[2, 0, 0], [4, 0, 0], [2, 2, 2], [1, 1, 1], [1, 1, 0]])).tolist() == [
        False,
        True,
        True,
        True,
        False,
    ]
    p21c = np.array([[0, 1, 0], [0, 2, 0], [1, 0, 1], [1, 0, 2]])
    assert sym.is_allowed(14, p21c).tolist() == [False, True, False, True]
    assert sym.is_allowed(14, np.zeros((2, 0, 3), dtype=int)).shape == (2, 0)
    assert (0, 1, 0) in sym.systematic_absences(14) and (0, 2, 0) not in sym.systematic_absences(14)


def test_is_allowed_matches_the_definition_operation_by_operation():
    hkl = _box(4)
    for sg in (4, 14, 43, 62, 88, 142, 167, 186, 212, 220, 228, 230):
        rot, trans = sym.symmetry_operations(sg)
        expected = []
        for h in hkl:
            absent = any(
                np.array_equal(h @ r, h) and abs(h @ t - round(h @ t)) > 1e-6 for r, t in zip(rot, trans)
            )
            expected.append(not absent)
        assert np.array_equal(sym.is_allowed(sg, hkl), expected), sg


@pytest.mark.parametrize("bad", [0, 231, -1, 3.0, True, "14"])
def test_bad_space_group_numbers_are_rejected(bad):
    with pytest.raises(ValueError):
        sym.crystal_system(bad)
    with pytest.raises(ValueError):
        sym.extinction_group(bad)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError):
        sym.is_allowed(14, np.array([1, 2]))
    with pytest.raises(ValueError):
        sym.is_allowed(14, np.array([[0.5, 0, 0]]))
    with pytest.raises(ValueError):
        sym.extinction_group_members(sym.N_EXTINCTION_GROUPS)
    with pytest.raises(AttributeError):
        sym.NOT_A_TABLE  # noqa: B018
