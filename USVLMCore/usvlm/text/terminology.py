"""Coded terminology of segments: what a segment is (category, type) and where (anatomic region).

One `Terminology` serves both outputs: Slicer's `TerminologyEntry` tag in a .seg.nrrd (string
format via slicerio) and the DICOM SEG segment description codes (via highdicom).

Codes follow the DICOM context groups Slicer's terminology lists are built from (CID 7150
categories, CID 7159/7166 types, CID 4031 regions). Note Cyst: DICOM CID 7159 and Slicer use
SCT 367643001; SNOMED CT has since moved the concept to 441457006, which neither lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from slicerio.segmentation import terminology_entry_from_string, terminology_entry_to_string

# Context names of the terminology lists that ship with Slicer.
SLICER_GENERAL_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
DICOM_MASTER_LIST = "Segmentation category and type - DICOM master list"
ANATOMIC_DICOM_MASTER_LIST = "Anatomic codes - DICOM master list"

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Code:
    """A coded concept: coding scheme designator, code value, code meaning."""

    value: str
    meaning: str
    scheme: str = "SCT"

    def to_slicer(self) -> list[str]:
        return [self.scheme, self.value, self.meaning]

    @classmethod
    def from_slicer(cls, parts: Sequence[str] | None) -> "Code | None":
        """From slicerio's [scheme, value, meaning] list; None for an empty code."""
        if not parts or not any(parts):
            return None
        scheme, value, meaning = (list(parts) + ["", "", ""])[:3]
        return cls(value=value, meaning=meaning, scheme=scheme)

    def to_highdicom(self) -> Any:
        from highdicom.sr import CodedConcept

        return CodedConcept(value=self.value, scheme_designator=self.scheme, meaning=self.meaning)


class HighdicomCodes(NamedTuple):
    """The codes of a `highdicom.seg.SegmentDescription` (modifiers are nested by the writer)."""

    category: Any
    type: Any
    type_modifier: Any | None
    anatomic_regions: list[Any] | None
    anatomic_region_modifier: Any | None


@dataclass(frozen=True)
class Terminology:
    """Slicer / DICOM terminology of one segment."""

    category: Code
    type: Code
    type_modifier: Code | None = None
    anatomic_region: Code | None = None
    anatomic_region_modifier: Code | None = None
    context: str = SLICER_GENERAL_ANATOMY
    anatomic_context: str = ANATOMIC_DICOM_MASTER_LIST
    # Slicer's recommended display colour (RGB 0-1); not part of the coded identity.
    recommended_color: RGB | None = field(default=None, compare=False)

    def with_region(self, region: Code | None, modifier: Code | None = None) -> "Terminology":
        return replace(self, anatomic_region=region, anatomic_region_modifier=modifier)

    # -- Slicer ---------------------------------------------------------------------------------
    def to_slicer_dict(self) -> dict[str, Any]:
        """The terminology dict slicerio reads and writes."""
        entry: dict[str, Any] = {"contextName": self.context, "category": self.category.to_slicer(),
                                 "type": self.type.to_slicer()}
        if self.type_modifier is not None:
            entry["typeModifier"] = self.type_modifier.to_slicer()
        entry["anatomicContextName"] = self.anatomic_context
        if self.anatomic_region is not None:
            entry["anatomicRegion"] = self.anatomic_region.to_slicer()
            if self.anatomic_region_modifier is not None:
                entry["anatomicRegionModifier"] = self.anatomic_region_modifier.to_slicer()
        return entry

    def to_slicer_string(self) -> str:
        """The `TerminologyEntry` tag value of a segment in a .seg.nrrd file."""
        return terminology_entry_to_string(self.to_slicer_dict())

    @classmethod
    def from_slicer(cls, entry: str | Mapping[str, Any]) -> "Terminology":
        """From a `TerminologyEntry` string or slicerio's terminology dict."""
        if isinstance(entry, str):
            entry = terminology_entry_from_string(entry)
        category = Code.from_slicer(entry.get("category"))
        type_ = Code.from_slicer(entry.get("type"))
        if category is None or type_ is None:
            raise ValueError(f"terminology entry has no category or type: {entry!r}")
        return cls(category=category, type=type_,
                   type_modifier=Code.from_slicer(entry.get("typeModifier")),
                   anatomic_region=Code.from_slicer(entry.get("anatomicRegion")),
                   anatomic_region_modifier=Code.from_slicer(entry.get("anatomicRegionModifier")),
                   context=entry.get("contextName") or SLICER_GENERAL_ANATOMY,
                   anatomic_context=entry.get("anatomicContextName") or ANATOMIC_DICOM_MASTER_LIST)

    # -- DICOM ----------------------------------------------------------------------------------
    def to_highdicom(self) -> HighdicomCodes:
        return HighdicomCodes(
            category=self.category.to_highdicom(), type=self.type.to_highdicom(),
            type_modifier=self.type_modifier.to_highdicom() if self.type_modifier else None,
            anatomic_regions=[self.anatomic_region.to_highdicom()] if self.anatomic_region else None,
            anatomic_region_modifier=(self.anatomic_region_modifier.to_highdicom()
                                      if self.anatomic_region_modifier else None))


def _rgb255(r: int, g: int, b: int) -> RGB:
    return (r / 255.0, g / 255.0, b / 255.0)


# -- Standard codes ------------------------------------------------------------------------------
# Segmentation property categories (CID 7150), spelled as in Slicer's lists.
TISSUE = Code("85756007", "Tissue")
ANATOMICAL_STRUCTURE = Code("123037004", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("49755003", "Morphologically Altered Structure")

# Anatomic regions (CID 4031 Common Anatomic Regions), keyed by lower-case name.
REGIONS: dict[str, Code] = {
    "breast": Code("76752008", "Breast"),
    "thyroid": Code("69748006", "Thyroid"),
    "neck": Code("45048000", "Neck"),
    "lymph node": Code("59441001", "Lymph node"),
    "prostate": Code("41216001", "Prostate"),
}

# Findings and structures, keyed by lower-case name. Colours of tissue, mass, cyst and lymph node
# are those Slicer's General Anatomy list recommends; the others are chosen to stand apart.
TERMS: dict[str, Terminology] = {
    "tissue": Terminology(TISSUE, TISSUE, recommended_color=_rgb255(128, 174, 128)),
    "mass": Terminology(MORPHOLOGICALLY_ALTERED_STRUCTURE, Code("4147007", "Mass"),
                        recommended_color=_rgb255(144, 238, 144)),
    "cyst": Terminology(MORPHOLOGICALLY_ALTERED_STRUCTURE, Code("367643001", "Cyst"),
                        recommended_color=_rgb255(205, 205, 100)),
    # Nodule is in DICOM CID 7159 but not in Slicer's General Anatomy list.
    "nodule": Terminology(MORPHOLOGICALLY_ALTERED_STRUCTURE, Code("27925004", "Nodule"),
                          context=DICOM_MASTER_LIST, recommended_color=_rgb255(230, 170, 60)),
    "lymph node": Terminology(TISSUE, Code("59441001", "Lymph node"),
                              recommended_color=_rgb255(68, 172, 100)),
    "prostate": Terminology(ANATOMICAL_STRUCTURE, Code("41216001", "Prostate"),
                            recommended_color=_rgb255(230, 158, 140)),
    "breast": Terminology(ANATOMICAL_STRUCTURE, Code("76752008", "Breast"),
                          recommended_color=_rgb255(255, 224, 199)),
    "thyroid": Terminology(ANATOMICAL_STRUCTURE, Code("69748006", "Thyroid"),
                           recommended_color=_rgb255(220, 140, 110)),
}

# What is usually contoured on ultrasound of each organ (the paper's data sets: BUSI breast
# masses, DDTI/TN3K thyroid nodules, cervical lymph nodes, the prostate gland itself).
ORGAN_TARGETS: dict[str, Terminology] = {
    "breast": TERMS["mass"].with_region(REGIONS["breast"]),
    "thyroid": TERMS["nodule"].with_region(REGIONS["thyroid"]),
    "lymph node": TERMS["lymph node"].with_region(REGIONS["neck"]),
    "prostate": TERMS["prostate"],
}

DEFAULT_TERMINOLOGY = TERMS["tissue"]


def terminology(name: str, region: str | None = None) -> Terminology:
    """The standard terminology called `name` ("mass", "cyst", ...), optionally in `region`."""
    key = name.strip().lower()
    if key not in TERMS:
        raise KeyError(f"unknown term {name!r}; known: {', '.join(sorted(TERMS))}")
    term = TERMS[key]
    if region is None:
        return term
    region_key = region.strip().lower()
    if region_key not in REGIONS:
        raise KeyError(f"unknown region {region!r}; known: {', '.join(sorted(REGIONS))}")
    return term.with_region(REGIONS[region_key])


def organ_target(organ: str | None) -> Terminology:
    """The terminology of what is contoured on an image of `organ` (generic tissue if None)."""
    if organ is None:
        return DEFAULT_TERMINOLOGY
    key = organ.strip().lower()
    if key not in ORGAN_TARGETS:
        raise KeyError(f"unknown organ {organ!r}; known: {', '.join(sorted(ORGAN_TARGETS))}")
    return ORGAN_TARGETS[key]
