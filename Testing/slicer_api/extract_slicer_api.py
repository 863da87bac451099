#!/usr/bin/env python3
"""Extract the Slicer API the USVLMSegment module uses, for Testing/test_slicer_api.py.

Run by a developer who has a git mirror of Slicer (and of CTK), never by CI: CI reads the JSON
this writes (Testing/slicer_api/slicer-<tag>.json), one per supported Slicer release.

    python Testing/slicer_api/extract_slicer_api.py \
        --slicer-git-dir /work/.mirror/Slicer+Slicer/repo --ctk-git-dir /work/.mirror/commontk+CTK/repo

For each tag it reads, straight from the tag's tree (`git show <tag>:<path>`, nothing checked out):

- the C++ headers of the MRML / Slicer / CTK classes the module uses (SEED_CLASSES, every
  vtkMRML*/vtkSlicer*/vtkSegment*/qSlicer*/qMRML*/ctk* name that occurs in the module's Python,
  every widget class of its .ui) and, transitively, of their base classes found in Slicer or CTK:
  public methods (vtkGetMacro/vtkSetMacro/vtkBooleanMacro/... expanded to Get<Name>/Set<Name>/
  <Name>On/<Name>Off), public enum constants (event ids such as StartCloseEvent), and for Qt classes
  the names Python can reach (slots, Q_INVOKABLE methods, signals, Q_PROPERTY names, Q_ENUMS values);
- CTK from the commit Slicer pins in SuperBuild/External_CTK.cmake (ctkDICOMDatabase, ctkPathLineEdit,
  the .ui's ctk widgets);
- the Python API: top-level public names (and function signatures) of slicer/util.py and
  DICOMLib/DICOMUtils.py, the names slicer.parameterNodeWrapper exports (its `from .x import *`
  resolved through each submodule's __all__), the classes of slicer/ScriptedLoadableModule.py with
  their methods, and the names the `slicer` package gets at run time.

Header parsing is a small tokenizer, not a C++ compiler: comments and preprocessor lines are
dropped, `#ifndef __VTK_WRAP__` blocks are skipped (Python never sees them), the class body is
split into declarations at brace depth one, and a declaration's name is the identifier before its
first parenthesis. `all_classes` lists every Slicer/CTK header stem, so the test can tell a real
class the module does not use yet from an invented one.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "USVLMSegment"
OUT = Path(__file__).resolve().parent
TAGS = ("v5.8.1", "v5.10.0")

# Classes the module uses without naming them in its source (the type of an object it gets from a
# call), with where. Every class named in the module's Python or .ui is added automatically.
SEED_CLASSES = {
    "vtkMRMLScene": "slicer.mrmlScene",
    "vtkMRMLNode": "every node: GetID, GetName, GetAttribute, GetNodeReferenceID",
    "vtkMRMLScalarVolumeNode": "the input volume (parameters.py)",
    "vtkMRMLVectorVolumeNode": "an RGB input volume (parameters.py)",
    "vtkMRMLLabelMapVolumeNode": "hidden from the input selector (widget.py)",
    "vtkMRMLStorageNode": "volumeNode.GetStorageNode().GetFileName() (scene.py)",
    "vtkMRMLTransformNode": "volumeNode.GetParentTransformNode().GetTransformFromWorld (scene.py)",
    "vtkMRMLSliceNode": "layoutManager().sliceWidget().mrmlSliceNode().GetSliceToRAS (scene.py)",
    "vtkMRMLSegmentationNode": "the output (scene.py, sequences.py)",
    "vtkSegmentation": "segmentationNode.GetSegmentation() (scene.py)",
    "vtkSegment": "segmentation.GetSegment() (scene.py)",
    "vtkMRMLSequenceNode": "browser.GetSequenceNode() (sequences.py)",
    "vtkMRMLSequenceBrowserNode": "GetFirstBrowserNodeForProxyNode() (sequences.py)",
    "vtkSlicerSequencesLogic": "slicer.modules.sequences.logic() (sequences.py)",
    "vtkSlicerSegmentationsModuleLogic": "slicer.modules.segmentations.logic()",
    "vtkMRMLMarkupsNode": "the click point's events (widget.py)",
    "vtkMRMLMarkupsFiducialNode": "the click point (parameters.py)",
    "vtkMRMLScriptedModuleNode": "the parameter node (parameterNodeWrapper)",
    "qSlicerApplication": "slicer.app",
    "qSlicerCoreApplication": "slicer.app (base)",
    "qSlicerLayoutManager": "slicer.app.layoutManager() (scene.py)",
    "qMRMLSliceWidget": "layoutManager().sliceWidget() (scene.py)",
    "qMRMLNodeComboBox": "the .ui's node selectors",
    "qSlicerMarkupsPlaceWidget": "the .ui's click-point widget",
    "ctkDICOMDatabase": "slicer.dicomDatabase (scene.py, dicom_header.py)",
    "ctkPathLineEdit": "the .ui's cohort folder",
    # Not called yet, but what node.GetDisplayNode() / a DICOM load / click placement / a segment
    # edit hands the module next: extracted so a new call on them is checked, not refused.
    "vtkMRMLDisplayNode": "node.GetDisplayNode()",
    "vtkMRMLSegmentationDisplayNode": "segmentationNode.GetDisplayNode()",
    "vtkMRMLScalarVolumeDisplayNode": "volumeNode.GetDisplayNode() (window/level)",
    "vtkMRMLMarkupsDisplayNode": "the click point's display",
    "vtkMRMLSubjectHierarchyNode": "DICOM-loaded nodes' study/series items",
    "vtkMRMLSelectionNode": "the active volume / place node class",
    "vtkMRMLInteractionNode": "place mode of the click point",
    "vtkMRMLSegmentEditorNode": "the Segment Editor's state",
}

# The module's Slicer-dependent files (the ones Testing/test_slicer_api.py checks).
MODULE_FILES = ("USVLMSegment.py",) + tuple(
    f"USVLMSegmentLib/{n}.py" for n in ("widget", "logic", "scene", "sequences", "parameters", "results",
                                        "selftest", "torch_choice", "dicom_header"))
UI_FILE = "Resources/UI/USVLMSegment.ui"

# Header stems that name classes Python reaches as slicer.<name> / ctk.<name>.
CLASS_STEM = re.compile(r"^(vtkMRML|vtkSlicer|vtkSegment|vtkOrientedImageData|qMRML|qSlicer|ctk)\w*$")
USED_NAME = re.compile(r"\b((?:vtkMRML|vtkSlicer|vtkSegment|qMRML|qSlicer|ctk)\w+)\b")


# -- git -------------------------------------------------------------------------------------------

class Tree:
    """One commit of a bare git repository, read without a checkout."""

    def __init__(self, git_dir: str, rev: str) -> None:
        self.git_dir, self.rev = git_dir, rev
        self.commit = self._git("rev-parse", f"{rev}^{{commit}}").strip()
        self.paths = self._git("ls-tree", "-r", "--name-only", self.commit).splitlines()

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", f"--git-dir={self.git_dir}", *args], check=True,
                              capture_output=True, text=True, errors="replace").stdout

    def show(self, path: str) -> str:
        return self._git("show", f"{self.commit}:{path}")


# -- C++ headers -----------------------------------------------------------------------------------

TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|[A-Za-z_]\w*|\d[\w.]*|::|->|\S')
COMMENT = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"', re.S)
WRAP_EXCLUDED = re.compile(r"^#\s*(ifndef\s+__VTK_WRAP__|if\s+!\s*defined\s*\(?\s*__VTK_WRAP__)")
GET_MACRO = re.compile(r"^vtkGet(String|Object|SmartPointer|Vector\d?|Enum|FilePath|New)?Macro$")
SET_MACRO = re.compile(r"^vtkSet(String|Object|SmartPointer|Vector\d?|Enum|FilePath|Clamp|ReferenceString)?Macro$")
VTK_TYPE_METHODS = ("IsA", "IsTypeOf", "SafeDownCast", "NewInstance", "GetNumberOfGenerationsFromBase",
                    "GetNumberOfGenerationsFromBaseType")


def strip_comments(text: str) -> str:
    return COMMENT.sub(lambda m: m.group(0) if m.group(0).startswith('"') else " ", text)


def preprocess(text: str) -> str:
    """Drop preprocessor lines (with their continuations) and the blocks VTK's wrapper skips."""
    lines = strip_comments(text).replace("\\\n", " ").splitlines()
    out, stack = [], []  # stack: is this #if block excluded from wrapping?
    for line in lines:
        s = line.strip()
        if s.startswith("#"):
            directive = re.match(r"#\s*(\w+)", s)
            d = directive.group(1) if directive else ""
            if d in ("if", "ifdef", "ifndef"):
                stack.append(bool(WRAP_EXCLUDED.match(s)))
            elif d in ("else", "elif") and stack:
                stack[-1] = False  # the #else of "#ifndef __VTK_WRAP__" is what the wrapper sees
            elif d == "endif" and stack:
                stack.pop()
            continue
        if not any(stack):
            out.append(line)
    return "\n".join(out)


def balanced(tokens: List[str], i: int, open_: str, close: str) -> int:
    """Index just past the bracket that closes tokens[i] (== open_)."""
    depth = 0
    while i < len(tokens):
        if tokens[i] == open_:
            depth += 1
        elif tokens[i] == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


class ClassInfo:
    def __init__(self, name: str, path: str) -> None:
        self.name, self.path = name, path
        self.bases: List[str] = []
        self.methods: Set[str] = set()
        self.constants: Set[str] = set()
        self.properties: Set[str] = set()
        self.signals: Set[str] = set()
        self.qt = False  # a QObject (Q_OBJECT): Python sees slots, Q_INVOKABLE, signals, properties
        self._enums: Dict[str, Set[str]] = {}  # named public enums (Qt: only Q_ENUMS ones are exposed)
        self._qt_enums: Set[str] = set()

    def finish(self) -> None:
        for enum, values in self._enums.items():
            if not self.qt or enum in self._qt_enums:
                self.constants |= values


def parse_class(text: str, name: str, path: str) -> Optional[ClassInfo]:
    tokens = TOKEN.findall(preprocess(text))
    start = None
    for i, t in enumerate(tokens):
        if t not in ("class", "struct"):
            continue
        j = i + 1
        while j < len(tokens) and re.fullmatch(r"[A-Z][A-Z0-9_]*|\w+_EXPORT", tokens[j]):
            j += 1  # export macro
        if j < len(tokens) and tokens[j] == name and j + 1 < len(tokens):
            k = j + 1
            if tokens[k] == "final":
                k += 1
            if tokens[k] in (":", "{"):
                start = (i, k)
                break
    if start is None:
        return None
    info = ClassInfo(name, path)
    k = start[1]
    if tokens[k] == ":":
        brace = tokens.index("{", k)
        depth, base = 0, []
        for t in tokens[k + 1:brace] + [","]:
            if t == "<":
                depth += 1
            elif t == ">":
                depth -= 1
            if t == "," and depth == 0:
                words = [w for w in base if w not in ("public", "protected", "private", "virtual")]
                if words and base[0] != "private" and base[0] != "protected" and "<" not in words:
                    info.bases.append(words[-1])
                base = []
            else:
                base.append(t)
        k = brace
    _walk_body(tokens, k, info, default_public=tokens[start[0]] == "struct")
    info.finish()
    return info


def _walk_body(tokens: List[str], i: int, info: ClassInfo, default_public: bool) -> None:
    end = balanced(tokens, i, "{", "}") - 1
    i += 1
    access = "public" if default_public else "private"
    stmt: List[str] = []
    parens = 0
    skip_next = False
    while i < end:
        t = tokens[i]
        nxt = tokens[i + 1] if i + 1 < end else ""
        if not stmt and t in ("public", "protected", "private"):
            if nxt == ":":
                access, i = t, i + 2
                continue
            if nxt in ("slots", "Q_SLOTS") and tokens[i + 2] == ":":
                access, i = t + " slots", i + 3
                continue
        if not stmt and t in ("signals", "Q_SIGNALS") and nxt == ":":
            access, i = "signals", i + 2
            continue
        if not stmt and t != "Q_INVOKABLE" and (re.fullmatch(r"(vtk|MRML)\w*Macro\w*", t)
                                                or re.fullmatch(r"[A-Z][A-Z0-9_]+", t)):
            args: List[str] = []
            if nxt == "(":
                close = balanced(tokens, i + 1, "(", ")")
                args, i = tokens[i + 2:close - 1], close
            else:
                i += 1
            if i < end and tokens[i] == ";":
                i += 1
            if t == "VTK_WRAPEXCLUDE":
                skip_next = True
            else:
                _macro(info, t, args, access)
            continue
        if t == "(":
            parens += 1
        elif t == ")":
            parens -= 1
        if t == "{":
            close = balanced(tokens, i, "{", "}")
            if parens > 0:  # a braced default argument
                stmt.extend(tokens[i:close])
                i = close
                continue
            header = stmt
            if "enum" in header:
                if access.startswith("public"):
                    _enum(info, header, tokens[i + 1:close - 1])
                stmt, i = ["<type>"], close  # the ';' after the enum ends it
                continue
            if any(w in header for w in ("class", "struct", "union")) and "(" not in header:
                stmt, i = ["<type>"], close
                continue
            if not skip_next:
                _declaration(info, header, access)
            skip_next = False
            stmt, i = [], close
            if i < end and tokens[i] == ";":
                i += 1
            continue
        if t == ";" and parens == 0:
            if not skip_next:
                _declaration(info, stmt, access)
            skip_next = False
            stmt, i = [], i + 1
            continue
        stmt.append(t)
        i += 1


def _macro(info: ClassInfo, macro: str, args: List[str], access: str) -> None:
    words = [a for a in args if re.fullmatch(r"[A-Za-z_]\w*", a)]
    if macro == "Q_OBJECT":
        info.qt = True
    elif macro == "Q_PROPERTY":
        for key in ("READ", "MEMBER", "WRITE"):
            if key in args:
                info.properties.add(args[args.index(key) - 1])
                break
    elif macro in ("Q_ENUMS", "Q_ENUM", "Q_FLAGS", "Q_FLAG"):
        info._qt_enums.update(words)
    if not access.startswith("public") or not words:
        return
    n = words[0]
    if GET_MACRO.match(macro):
        info.methods.add("Get" + n)
    elif SET_MACRO.match(macro):
        info.methods.add("Set" + n)
        if macro == "vtkSetClampMacro":
            info.methods.update((f"Get{n}MinValue", f"Get{n}MaxValue"))
    elif macro == "vtkBooleanMacro":
        info.methods.update((n + "On", n + "Off"))
    elif macro == "vtkTypeMacro":
        info.methods.update(VTK_TYPE_METHODS)
    elif macro in ("vtkMRMLCopyContentMacro", "vtkMRMLCopyContentDefaultMacro"):
        info.methods.add("HasCopyContent")
        if macro == "vtkMRMLCopyContentMacro":
            info.methods.add("CopyContent")


def _enum(info: ClassInfo, header: List[str], body: List[str]) -> None:
    after = header[header.index("enum") + 1:]
    after = [t for t in after if t not in ("class", "struct")]
    name = after[0] if after and re.fullmatch(r"[A-Za-z_]\w*", after[0]) else ""
    values, item = set(), []
    for t in body + [","]:
        if t == ",":
            if item and re.fullmatch(r"[A-Za-z_]\w*", item[0]):
                values.add(item[0])
            item = []
        else:
            item.append(t)
    info._enums.setdefault(name or f"<anonymous{len(info._enums)}>", set()).update(values)


def _declaration(info: ClassInfo, stmt: List[str], access: str) -> None:
    if not stmt or stmt[0] in ("friend", "typedef", "using", "<type>") or "(" not in stmt:
        return
    invokable = "Q_INVOKABLE" in stmt
    toks, i = [], 0
    while i < len(stmt):  # drop VTK_SIZEHINT(...)-style annotations
        if re.fullmatch(r"VTK_[A-Z_]+", stmt[i]) and i + 1 < len(stmt) and stmt[i + 1] == "(":
            i = balanced(stmt, i + 1, "(", ")")
            continue
        toks.append(stmt[i])
        i += 1
    if "(" not in toks:
        return
    p = toks.index("(")
    if p == 0 or "operator" in toks[:p]:
        return
    name = toks[p - 1]
    if not re.fullmatch(r"[A-Za-z_]\w*", name) or name == info.name or (p >= 2 and toks[p - 2] == "~"):
        return
    if access == "signals":
        info.signals.add(name)
    elif info.qt:
        if access.endswith("slots") and access.startswith("public") or (invokable and access == "public"):
            info.methods.add(name)
    elif access == "public":
        info.methods.add(name)


# -- the classes ---------------------------------------------------------------------------------

def header_index(tree: Tree) -> Dict[str, str]:
    """Class name -> header path, for every Slicer/CTK header named like a wrapped class."""
    index: Dict[str, str] = {}
    for path in sorted(tree.paths, key=lambda p: ("/Testing/" in p, p)):
        stem = Path(path).stem
        if path.endswith(".h") and CLASS_STEM.match(stem) and not stem.endswith(("_p", "Export")):
            index.setdefault(stem, path)
    return index


def module_class_names() -> Set[str]:
    names: Set[str] = set()
    for rel in MODULE_FILES:
        names |= set(USED_NAME.findall((MODULE / rel).read_text(encoding="utf-8")))
    names |= set(re.findall(r'<widget class="((?:qMRML|qSlicer|ctk)\w+)"', (MODULE / UI_FILE).read_text()))
    return names


def collect_classes(trees: List[Tuple[Tree, Dict[str, str]]], seeds: Iterable[str]) -> Dict[str, ClassInfo]:
    found: Dict[str, ClassInfo] = {}
    todo = sorted(set(seeds))
    while todo:
        name = todo.pop()
        if name in found:
            continue
        for tree, index in trees:
            if name in index:
                info = parse_class(tree.show(index[name]), name, index[name])
                if info is None:
                    raise SystemExit(f"{index[name]}: no class {name} found")
                found[name] = info
                todo.extend(b for b in info.bases if b not in found)
                break
    return found


# -- the Python API --------------------------------------------------------------------------------

def _signature(fn: ast.FunctionDef, drop_self: bool = False) -> List[str]:
    a = fn.args
    positional = list(a.posonlyargs) + list(a.args)
    if drop_self and positional:
        positional = positional[1:]
    first_default = len(positional) - len(a.defaults)
    out = [p.arg + ("=" if i >= first_default else "") for i, p in enumerate(positional)]
    if a.vararg:
        out.append("*" + a.vararg.arg)
    elif a.kwonlyargs:
        out.append("*")
    out += [k.arg + ("=" if d is not None else "") for k, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg:
        out.append("**" + a.kwarg.arg)
    return out


def python_module(source: str, module: str, api: dict) -> None:
    """Record a module's public top-level names, function signatures and classes."""
    tree = ast.parse(source)
    names, signatures, classes = set(), {}, {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
            signatures[f"{module}.{node.name}"] = _signature(node)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            methods = {n.name: n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            classes[f"{module}.{node.name}"] = {
                "bases": [ast.unparse(b) for b in node.bases],
                "methods": sorted(methods)}
            if "__init__" in methods:
                signatures[f"{module}.{node.name}"] = _signature(methods["__init__"], drop_self=True)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    api["python"][module] = sorted(n for n in names if not n.startswith("_"))
    api["python_signatures"].update(signatures)
    api["python_classes"].update(classes)


def module_all(source: str) -> List[str]:
    """A module's __all__ when it lists names literally, else its public top-level names."""
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return sorted(ast.literal_eval(node.value))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return sorted(n for n in names if not n.startswith("_"))


def parameter_node_wrapper(tree: Tree, api: dict) -> None:
    """The names slicer.parameterNodeWrapper exports, with their signatures."""
    folder = "Base/Python/slicer/parameterNodeWrapper"
    init = ast.parse(tree.show(f"{folder}/__init__.py"))
    names: Set[str] = set()
    scratch: dict = {"python": {}, "python_signatures": {}, "python_classes": {}}
    for node in init.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            source = tree.show(f"{folder}/{node.module}.py")
            python_module(source, "slicer.parameterNodeWrapper", scratch)
            if any(alias.name == "*" for alias in node.names):
                names.update(module_all(source))
            names.update(alias.asname or alias.name for alias in node.names if alias.name != "*")
    names = {n for n in names if not n.startswith("_")}
    api["python"]["slicer.parameterNodeWrapper"] = sorted(names)
    api["python_signatures"].update({k: v for k, v in scratch["python_signatures"].items()
                                     if k.rsplit(".", 1)[1] in names})


def slicer_namespace(tree: Tree) -> List[str]:
    """Names of the `slicer` package: its submodules and the attributes set on it at run time."""
    names: Set[str] = set()
    prefix = "Base/Python/slicer/"
    for path in tree.paths:
        if path.startswith(prefix) and "/tests/" not in path:
            first = path[len(prefix):].split("/")[0]
            names.add(first[:-3] if first.endswith(".py") else first.split(".")[0])
    names.discard("__init__")
    init = tree.show(prefix + "__init__.py")
    names.update(re.findall(r"py:attribute:: (\w+)", init))
    names.update(re.findall(r'_createModule\("slicer\.(\w+)"', init))
    for path in ("Base/Python/slicer/slicerqt.py", "Base/Python/slicer/ScriptedLoadableModule.py",
                 "Modules/Scripted/DICOM/DICOM.py"):
        text = tree.show(path)
        names.update(re.findall(r'setattr\(slicer,\s*"(\w+)"', text))
        names.update(re.findall(r"^\s*slicer\.(\w+)\s*=", text, re.M))
    return sorted(n for n in names if not n.startswith("_") and n != "kits")


# -- one tag ---------------------------------------------------------------------------------------

def ctk_commit(tree: Tree) -> str:
    text = tree.show("SuperBuild/External_CTK.cmake")
    m = re.search(r'Slicer_\$\{proj\}_GIT_TAG\s*"([0-9a-f]{40})"', text)
    if not m:
        raise SystemExit("no CTK commit in SuperBuild/External_CTK.cmake")
    return m.group(1)


def extract(slicer_git: str, ctk_git: str, tag: str) -> dict:
    slicer = Tree(slicer_git, tag)
    ctk = Tree(ctk_git, ctk_commit(slicer))
    trees = [(slicer, header_index(slicer)), (ctk, header_index(ctk))]
    seeds = set(SEED_CLASSES) | module_class_names()
    classes = collect_classes(trees, seeds)
    missing = sorted(s for s in SEED_CLASSES if s not in classes)
    if missing:
        raise SystemExit(f"{tag}: no header for {missing}")
    api: dict = {
        "tag": tag,
        "commit": slicer.commit,
        "ctk_commit": ctk.commit,
        "generated_by": "Testing/slicer_api/extract_slicer_api.py from the headers and Python of "
                        f"Slicer/Slicer {tag} and commontk/CTK {ctk.commit[:12]} (SuperBuild/External_CTK.cmake)",
        "classes": {}, "bases": {}, "constants": {}, "properties": {}, "signals": {}, "headers": {},
        "all_classes": sorted(set(trees[0][1]) | set(trees[1][1])),
        "python": {}, "python_signatures": {}, "python_classes": {},
    }
    for name in sorted(classes):
        c = classes[name]
        api["classes"][name] = sorted(c.methods)
        api["headers"][name] = ("CTK:" if c.path in trees[1][1].values() and name not in trees[0][1] else "") + c.path
        if c.bases:
            api["bases"][name] = c.bases
        for key, values in (("constants", c.constants), ("properties", c.properties), ("signals", c.signals)):
            if values:
                api[key][name] = sorted(values)
    python_module(slicer.show("Base/Python/slicer/util.py"), "slicer.util", api)
    python_module(slicer.show("Modules/Scripted/DICOMLib/DICOMUtils.py"), "DICOMLib.DICOMUtils", api)
    python_module(slicer.show("Base/Python/slicer/ScriptedLoadableModule.py"), "slicer.ScriptedLoadableModule", api)
    parameter_node_wrapper(slicer, api)
    dicomlib = {Path(p).stem for p in slicer.paths if re.fullmatch(r"Modules/Scripted/DICOMLib/[^/]+\.py", p)}
    dicomlib |= set(module_all(slicer.show("Modules/Scripted/DICOMLib/__init__.py")))
    api["python"]["DICOMLib"] = sorted(dicomlib - {"__init__"})
    api["python"]["slicer"] = slicer_namespace(slicer)
    return api


def dump(api: dict) -> str:
    """JSON with one line per class / module, so a regeneration diffs readably."""
    lines = ["{"]
    keys = list(api)
    for n, key in enumerate(keys):
        value = api[key]
        comma = "," if n < len(keys) - 1 else ""
        if isinstance(value, dict) and value:
            lines.append(f"  {json.dumps(key)}: {{")
            items = list(value.items())
            for m, (k, v) in enumerate(items):
                lines.append(f"    {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
                             + ("," if m < len(items) - 1 else ""))
            lines.append("  }" + comma)
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, separators=(',', ':'))}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slicer-git-dir", default="/work/.mirror/Slicer+Slicer/repo")
    parser.add_argument("--ctk-git-dir", default="/work/.mirror/commontk+CTK/repo")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("tags", nargs="*", default=list(TAGS))
    args = parser.parse_args(argv)
    for tag in args.tags:
        api = extract(args.slicer_git_dir, args.ctk_git_dir, tag)
        path = args.out / f"slicer-{tag}.json"
        path.write_text(dump(api), encoding="utf-8")
        print(f"{path}: {len(api['classes'])} classes, {path.stat().st_size // 1024} KB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
