"""Static check of the Slicer / MRML / CTK API the USVLMSegment module calls, against Slicer 5.8.1
and 5.10.0 (the releases the extension supports).

Slicer cannot run here, so a typo in `browser.GetSelectedItemNumber()` or an invented
`slicer.util.arrayFromVolume` variant would only show in Slicer. The API of each release is
vendored in Testing/slicer_api/slicer-<tag>.json, extracted from Slicer's (and the pinned CTK's)
headers and Python by Testing/slicer_api/extract_slicer_api.py; this test parses the module's
Slicer-dependent files (ast) and the .ui and checks, in BOTH releases:

- `slicer.util.X`, `from slicer.util import X`, `DICOMUtils.X`, `from DICOMLib import X`,
  `slicer.parameterNodeWrapper` / `slicer.ScriptedLoadableModule` imports, `slicer.<name>`: exist;
  calls of slicer.util / DICOMUtils functions pass keywords and positional counts they accept;
- `slicer.vtkMRML...` / `slicer.vtkSegment...` / `slicer.qSlicer...` and "vtkMRML..." strings
  (AddNewNodeByClass, IsA, nodeTypes) name real classes;
- attributes of an object whose class is known (`slicer.mrmlScene`, `slicer.app`,
  `slicer.dicomDatabase`, `slicer.modules.sequences.logic()`, `slicer.<Class>`, `self.ui.<w>` of
  a Slicer/CTK widget class in the .ui) exist in that class or its bases (events, enums included);
- every other CamelCase method call `x.Name(...)` exists in some extracted MRML/Slicer class, or
  in VTK_CORE_METHODS (a short allow-list, each entry with its reason);
- `self.name(...)` in subclasses of ScriptedLoadableModule* / VTKObservationMixin is defined by the
  class or by those Slicer bases;
- the .ui's properties, signals and slots on Slicer/CTK widgets exist (Q_PROPERTY, signals, slots).
"""

from __future__ import annotations

import ast
import difflib
import json
import re
import sys
import unittest
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "USVLMSegment"
API_DIR = Path(__file__).resolve().parent / "slicer_api"
TAGS = ("v5.8.1", "v5.10.0")

sys.path.insert(0, str(API_DIR))
from extract_slicer_api import MODULE_FILES, UI_FILE  # noqa: E402  (the generator's file list)

# CamelCase methods of VTK's own classes (not MRML/Slicer, so not in the extracted data) that the
# module may call. Each entry is checked NOT to be in the extracted data (else it is redundant).
VTK_CORE_METHODS = {
    "GetElement": "vtkMatrix4x4::GetElement (slice-to-RAS matrix, scene.py)",
    "TransformPoint": "vtkAbstractTransform::TransformPoint (vtkGeneralTransform, scene.py)",
    "GetClassName": "vtkObjectBase::GetClassName",
    "AddObserver": "vtkObject::AddObserver",
    "RemoveObserver": "vtkObject::RemoveObserver",
    "RemoveObservers": "vtkObject::RemoveObservers",
    "HasObserver": "vtkObject::HasObserver",
    "GetMTime": "vtkObject::GetMTime",
    "GetPointData": "vtkDataSet::GetPointData (a volume's image data)",
    "GetScalars": "vtkDataSetAttributes::GetScalars",
    "GetNumberOfScalarComponents": "vtkImageData::GetNumberOfScalarComponents",
    "GetItemAsObject": "vtkCollection::GetItemAsObject",
}

# Names reached on Qt objects through Qt's own classes (not Slicer/CTK headers, so not extracted).
QT_INHERITED = {
    "QCoreApplication": {"processEvents": "QCoreApplication::processEvents (static slot)",
                         "quit": "QCoreApplication::quit (slot)"},
    "QWidget": {n: "QWidget property / slot (Qt documentation)" for n in (
        "enabled", "visible", "toolTip", "setEnabled", "setVisible", "show", "hide", "setToolTip",
        "objectName", "styleSheet", "sizePolicy", "minimumSize", "maximumSize", "geometry")},
    "QAbstractButton": {n: "QAbstractButton property / signal (Qt documentation)" for n in (
        "text", "checkable", "checked", "clicked", "toggled")},
}
QT_BASES = {"QApplication": "QCoreApplication", "QGuiApplication": "QCoreApplication",
            "QAbstractButton": "QWidget", "QFrame": "QWidget", "QComboBox": "QWidget"}

# Dynamic properties set in the .ui that no header declares.
UI_DYNAMIC_PROPERTIES = {
    "SlicerParameterName": "read by slicer.parameterNodeWrapper (SlicerParameterNamePropertyName) to bind "
                           "the widget to a parameter",
}

# Properties the module relies on (the .ui and widget.py set them); each must be a Q_PROPERTY.
REQUIRED_PROPERTIES = (
    ("qMRMLNodeComboBox", "nodeTypes", "Libs/MRML/Widgets/qMRMLNodeComboBox.h"),
    ("qMRMLNodeComboBox", "hideChildNodeTypes", "Libs/MRML/Widgets/qMRMLNodeComboBox.h"),
    ("qSlicerMarkupsPlaceWidget", "placeMultipleMarkups",
     "Modules/Loadable/Markups/Widgets/qSlicerMarkupsPlaceWidget.h"),
    ("ctkPathLineEdit", "currentPath", "CTK:Libs/Widgets/ctkPathLineEdit.h"),
)

# The class a few Slicer calls return, for typed checks along a chain.
MODULE_LOGIC = {"sequences": "vtkSlicerSequencesLogic", "segmentations": "vtkSlicerSegmentationsModuleLogic"}
# Only calls whose object is always of that class (never a subclass Python would see instead).
RETURNS = {("qSlicerApplication", "layoutManager"): "qSlicerLayoutManager",
           ("qSlicerCoreApplication", "mrmlScene"): "vtkMRMLScene",
           ("qSlicerCoreApplication", "dicomDatabase"): "ctkDICOMDatabase",
           ("qMRMLLayoutManager", "sliceWidget"): "qMRMLSliceWidget",
           ("qMRMLSliceWidget", "mrmlSliceNode"): "vtkMRMLSliceNode",
           ("vtkSlicerSequencesLogic", "GetFirstBrowserNodeForProxyNode"): "vtkMRMLSequenceBrowserNode",
           ("vtkMRMLSequenceBrowserNode", "GetMasterSequenceNode"): "vtkMRMLSequenceNode",
           ("vtkMRMLSequenceBrowserNode", "GetSequenceNode"): "vtkMRMLSequenceNode",
           ("vtkMRMLSegmentationNode", "GetSegmentation"): "vtkSegmentation",
           ("vtkSegmentation", "GetSegment"): "vtkSegment",
           ("vtkSegmentation", "GetNthSegment"): "vtkSegment",
           ("vtkMRMLStorableNode", "GetStorageNode"): "vtkMRMLStorageNode",
           ("vtkMRMLTransformableNode", "GetParentTransformNode"): "vtkMRMLTransformNode"}
SLICER_INSTANCES = {"mrmlScene": "vtkMRMLScene", "app": "qSlicerApplication", "dicomDatabase": "ctkDICOMDatabase"}
PY_MODULES = ("slicer.util", "DICOMLib.DICOMUtils", "slicer.parameterNodeWrapper",
              "slicer.ScriptedLoadableModule", "DICOMLib", "slicer")
CLASS_NAME = re.compile(r"^(vtkMRML|vtkSlicer|vtkSegment|vtkOrientedImageData|qMRML|qSlicer|ctk)\w+$")


# -- the vendored API --------------------------------------------------------------------------------

class SlicerApi:
    """One release's API as extracted: classes with their bases, and Python modules."""

    def __init__(self, data: dict) -> None:
        self.data, self.tag = data, data["tag"]
        self.classes: Dict[str, List[str]] = data["classes"]
        self.all_classes = set(data["all_classes"])
        self.python = {k: set(v) for k, v in data["python"].items()}
        self.union_methods = {m for methods in self.classes.values() for m in methods}

    def chain(self, cls: str) -> List[str]:
        """The class and its bases, depth first (bases outside the data included, e.g. QWidget)."""
        out, todo = [], [cls]
        while todo:
            c = todo.pop(0)
            if c in out:
                continue
            out.append(c)
            todo.extend(self.data["bases"].get(c, []))
            todo.extend([QT_BASES[c]] if c in QT_BASES else [])
        return out

    def members(self, cls: str, kinds: Iterable[str] = ("classes", "constants", "properties", "signals")) -> Set[str]:
        names: Set[str] = set()
        for c in self.chain(cls):
            for kind in kinds:
                names.update(self.data[kind].get(c, []))
            names.update(QT_INHERITED.get(c, {}))
        if self.is_vtk(cls):
            names.update(VTK_CORE_METHODS)
        return names

    def is_vtk(self, cls: str) -> bool:
        return cls.startswith("vtk")

    def py_class(self, qualified: str) -> Optional[dict]:
        return self.data["python_classes"].get(qualified)

    def py_methods(self, qualified: str) -> Optional[Set[str]]:
        """Methods of a Slicer Python class and its bases (None: a base is unknown)."""
        info = self.py_class(qualified)
        if info is None:
            return None
        methods = set(info["methods"])
        module = qualified.rsplit(".", 1)[0]
        for base in info["bases"]:
            if base == "unittest.TestCase":
                methods |= set(dir(unittest.TestCase))
            elif base in ("object", "Exception"):
                continue
            else:
                more = self.py_methods(f"{module}.{base}")
                if more is None:
                    return None
                methods |= more
        return methods


def load_apis() -> Dict[str, SlicerApi]:
    apis = {}
    for tag in TAGS:
        path = API_DIR / f"slicer-{tag}.json"
        if not path.is_file():
            pytest.fail(f"{path} is missing: run Testing/slicer_api/extract_slicer_api.py with a Slicer mirror")
        apis[tag] = SlicerApi(json.loads(path.read_text(encoding="utf-8")))
    return apis


# -- the checker -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    code: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.code}: {self.problem}"


@dataclass(frozen=True)
class Need:
    """One API name the source relies on; `kind` says where it must be found."""

    line: int
    code: str
    kind: str  # python | class | member | method | widget | signature | self
    target: str  # module / class / qualified name ('' for method)
    name: str
    extra: tuple = ()
    end: Optional[Tuple[int, int]] = None  # where `name` ends in the source (line, UTF-8 byte column)


class _Collector(ast.NodeVisitor):
    def __init__(self, source: str, ui_classes: Dict[str, str]) -> None:
        self.source, self.ui_classes = source, ui_classes
        self.lines = [line.encode("utf-8") for line in source.split("\n")]  # ast offsets are UTF-8 bytes
        self.aliases: Dict[str, Tuple[str, str]] = {}  # name -> (kind, dotted)
        self.needs: List[Need] = []
        self.calls: Set[int] = set()  # ids of Attribute nodes that are called
        self.scopes: List[Dict[str, Tuple[str, str]]] = []  # typed local names per enclosing function

    # -- names ------------------------------------------------------------------------------------
    def code(self, node: ast.AST) -> str:
        """The node's source text on one line (ast.get_source_segment re-splits the file each call)."""
        if not hasattr(node, "end_lineno"):
            return ast.dump(node)
        l0, c0, l1, c1 = node.lineno - 1, node.col_offset, node.end_lineno - 1, node.end_col_offset
        if l0 == l1:
            raw = self.lines[l0][c0:c1]
        else:
            raw = b" ".join([self.lines[l0][c0:], *self.lines[l0 + 1:l1], self.lines[l1][:c1]])
        text = " ".join(raw.decode("utf-8", "replace").split())
        return text if len(text) <= 90 else text[:87] + "..."

    def need(self, node: ast.AST, kind: str, target: str, name: str, extra: tuple = (),
             end: Optional[Tuple[int, int]] = None) -> None:
        if end is None and isinstance(node, ast.Attribute):
            end = (node.end_lineno, node.end_col_offset)
        self.needs.append(Need(getattr(node, "lineno", 0), self.code(node), kind, target, name, extra, end))

    def collect_imports(self, tree: ast.AST) -> None:
        """Every import of the file, wherever it is (the self-test imports inside functions)."""
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        self.aliases[a.asname] = ("import", a.name)
                    else:
                        top = a.name.split(".")[0]
                        self.aliases[top] = ("import", top)
            elif isinstance(node, ast.ImportFrom) and node.level:
                for a in node.names:
                    self.aliases[a.asname or a.name] = ("local", a.name)
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                for a in node.names:
                    if module in PY_MODULES:
                        end = (a.lineno, a.col_offset + len(a.name.encode())) if hasattr(a, "lineno") else None
                        self.need(node, "python", module, a.name, end=end)
                    self.aliases[a.asname or a.name] = ("import", f"{module}.{a.name}")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        scope: Dict[str, Tuple[str, str]] = {}
        self.scopes.append(scope)
        scope.update(self._local_types(node, scope))
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def _local_types(self, func: ast.AST, scope: Dict[str, Tuple[str, str]]) -> Dict[str, Tuple[str, str]]:
        """Local names bound once (or always alike) to an object of a known Slicer class, e.g.
        `layout = slicer.app.layoutManager()`; a name bound any other way is left untyped."""
        found: Dict[str, Optional[Tuple[str, str]]] = {}
        args = func.args
        for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
            if a is not None:
                found[a.arg] = None
        simple = [n for n in ast.walk(func)
                  if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)]
        simple_targets = {id(n.targets[0]) for n in simple}
        for node in sorted(simple, key=lambda n: (n.lineno, n.col_offset)):  # in source order: a name
            name, typed = node.targets[0].id, self.resolve(node.value)  # may be typed from one before
            typed = typed if typed and typed[0] in ("instance", "returns") else None
            found[name] = typed if found.get(name, typed) == typed else None
            if found[name]:
                scope[name] = found[name]
            else:
                scope.pop(name, None)
        for node in ast.walk(func):  # any other binding (for, with, tuple targets, +=): untyped
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and id(node) not in simple_targets:
                found[node.id] = None
        return {k: v for k, v in found.items() if v}

    # -- what an expression is --------------------------------------------------------------------
    def resolve(self, node: ast.AST) -> Optional[Tuple[str, str]]:
        """('module'|'pyobj'|'instance'|'classobj'|'modules'|'slicermodule'|'external'|'local', name)."""
        if isinstance(node, ast.Name):
            for scope in reversed(self.scopes):
                if node.id in scope:
                    return scope[node.id]
            kind, dotted = self.aliases.get(node.id, (None, None))
            if kind == "local":
                return ("local", dotted)
            if kind is None:
                return None
            if dotted in PY_MODULES:
                return ("module", dotted)
            parent, _, last = dotted.rpartition(".")
            if parent == "slicer" and last in SLICER_INSTANCES:
                return ("instance", SLICER_INSTANCES[last])
            if parent in PY_MODULES:
                return ("pyobj", dotted)
            return ("external", dotted)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            if base is None:
                return None
            kind, name = base
            if kind == "module" and name == "slicer":
                if node.attr in SLICER_INSTANCES:
                    return ("instance", SLICER_INSTANCES[node.attr])
                if node.attr == "modules":
                    return ("modules", "")
                if CLASS_NAME.match(node.attr):
                    return ("classobj", node.attr)
                if f"slicer.{node.attr}" in PY_MODULES:
                    return ("module", f"slicer.{node.attr}")
                return ("slicerattr", node.attr)
            if kind == "module":
                dotted = f"{name}.{node.attr}"
                return ("module", dotted) if dotted in PY_MODULES else ("pyobj", dotted)
            if kind == "modules":
                return ("slicermodule", node.attr)
            if kind == "external":
                return ("external", f"{name}.{node.attr}")
            return None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            base = self.resolve(node.func.value)
            if base and base[0] == "slicermodule" and node.func.attr == "logic":
                return ("instance", MODULE_LOGIC[base[1]]) if base[1] in MODULE_LOGIC else None
            if base == ("instance", "vtkMRMLScene") and node.func.attr in ("AddNewNodeByClass", "CreateNodeByClass") \
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                return ("instance", node.args[0].value)  # the class it is asked for
            if base and base[0] in ("instance", "classobj", "returns"):
                return ("returns", f"{base[1]}.{node.func.attr}")
        return None

    # -- visits -----------------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute):
            self.calls.add(id(node.func))
        target = self.resolve(node.func)
        if target and target[0] == "pyobj":
            keywords = tuple(k.arg for k in node.keywords)  # None: **kwargs
            starred = any(isinstance(a, ast.Starred) for a in node.args)
            self.need(node, "signature", target[1], "", (len(node.args), keywords, starred))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr, called = node.attr, id(node) in self.calls
        base = self.resolve(node.value)
        kind, name = base if base else (None, "")
        if kind == "module" and name == "slicer":
            if CLASS_NAME.match(attr) or attr.startswith("vtk"):
                self.need(node, "class", "", attr)
            elif f"slicer.{attr}" not in PY_MODULES:
                self.need(node, "python", "slicer", attr)
        elif kind == "module" and f"{name}.{attr}" not in PY_MODULES:
            self.need(node, "python", name, attr)
        elif kind in ("instance", "classobj", "returns"):  # "returns": resolved per release through RETURNS
            self.need(node, "member", name, attr, (called,))
        elif self._ui_widget(node.value):
            widget = node.value.attr
            self.need(node, "widget", self.ui_classes[widget], attr)
        elif kind in ("external", "local", "slicermodule", "modules", "pyobj", "slicerattr"):
            pass  # numpy, qt, vtk, the module's own modules: not Slicer's C++ API
        elif called and attr[:1].isupper():
            self.need(node, "method", "", attr)
        self.generic_visit(node)

    def _ui_widget(self, node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self" and node.attr in self.ui_classes)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and re.fullmatch(r"vtkMRML\w+", node.value):
            self.need(node, "class", "", node.value, end=(node.end_lineno, node.end_col_offset - 1))

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        bases = [self.resolve(b) for b in node.bases]
        slicer_bases = [b[1] for b in bases if b and b[0] == "pyobj"]
        if slicer_bases and len(slicer_bases) == len(bases):
            own = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            own |= {n.id for s in node.body if isinstance(s, ast.Assign) for n in s.targets if isinstance(n, ast.Name)}
            for sub in ast.walk(node):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self" \
                        and isinstance(sub.ctx, ast.Store):
                    own.add(sub.attr)
            for sub in ast.walk(node):
                if not (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute)):
                    continue
                receiver = sub.func.value
                is_self = isinstance(receiver, ast.Name) and receiver.id == "self"
                is_super = (isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Name)
                            and receiver.func.id == "super")
                if (is_self and sub.func.attr not in own) or is_super:
                    self.need(sub.func, "self", ",".join(slicer_bases), sub.func.attr)
        self.generic_visit(node)


def _closest(name: str, candidates: Iterable[str]) -> str:
    found = difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.75)
    return f"; closest: {', '.join(found)}" if found else ""


def _signature_problem(tokens: List[str], nargs: int, keywords: tuple, starred: bool) -> Optional[str]:
    positional, kwonly, varargs, varkw = [], [], False, False
    seen_star = False
    for t in tokens:
        if t.startswith("**"):
            varkw = True
        elif t.startswith("*"):
            seen_star, varargs = True, varargs or len(t) > 1
        elif seen_star:
            kwonly.append(t.rstrip("="))
        else:
            positional.append(t)
    names = [p.rstrip("=") for p in positional]
    if not varargs and not starred and nargs > len(positional):
        return f"takes at most {len(positional)} positional argument(s) ({', '.join(tokens)}), given {nargs}"
    for k in keywords:
        if k is not None and k not in names[nargs:] + kwonly and not varkw:
            return f"has no keyword argument {k!r} ({', '.join(tokens)}){_closest(k, names + kwonly)}"
    if not starred and None not in keywords:
        required = [p for p in positional if not p.endswith("=")][nargs:]
        missing = [p for p in required if p not in keywords]
        if missing:
            return f"needs {', '.join(missing)} ({', '.join(tokens)})"
    return None


def _problem(need: Need, api: SlicerApi) -> Optional[Tuple[str, str]]:
    """(what is missing, hint) in this release, or None when the name exists."""
    k = need.kind
    if k == "python":
        names = api.python.get(need.target, set())
        if need.name in names:
            return None
        if need.target == "slicer" and need.name in api.all_classes:
            return None
        return f"{need.target} has no {need.name}", _closest(need.name, names)
    if k == "class":
        if need.name in api.all_classes:
            return None
        return f"no class {need.name} in Slicer/CTK", _closest(need.name, api.all_classes)
    if k == "member":
        cls = need.target
        if "." in cls:  # the class a chain of calls returns: "qSlicerApplication.layoutManager.sliceWidget"
            first, *methods = cls.split(".")
            cls = first
            for method in methods:
                cls = next((RETURNS[(c, method)] for c in api.chain(cls) if (c, method) in RETURNS), "")
                if not cls:  # a return type RETURNS does not model: check a method call as untyped
                    called = need.extra and need.extra[0]
                    untyped = Need(need.line, need.code, "method", "", need.name)
                    return _problem(untyped, api) if called and need.name[:1].isupper() else None
        if cls not in api.classes:
            if cls in api.all_classes:
                return (f"{cls} is not in the extracted data: add it to SEED_CLASSES in "
                        "Testing/slicer_api/extract_slicer_api.py and regenerate", "")
            return f"no class {cls} in Slicer/CTK", _closest(cls, api.all_classes)
        members = api.members(cls)
        if need.name in members:
            return None
        return f"{cls} (and its bases) has no {need.name}", _closest(need.name, members)
    if k == "widget":
        if need.target not in api.classes:
            return None  # a plain Qt widget: not checked
        members = api.members(need.target)
        if need.name in members:
            return None
        return (f"{need.target} (and its bases) has no property, slot, signal or invokable {need.name}",
                _closest(need.name, members))
    if k == "method":
        if need.name in api.union_methods or need.name in VTK_CORE_METHODS:
            return None
        return (f"{need.name} is not a method of any extracted MRML/Slicer class (nor in VTK_CORE_METHODS; "
                "if it is real, add its class to SEED_CLASSES in Testing/slicer_api/extract_slicer_api.py "
                "and regenerate)",
                _closest(need.name, api.union_methods | set(VTK_CORE_METHODS)))
    if k == "signature":
        tokens = api.data["python_signatures"].get(need.target)
        if tokens is None:
            return None  # not a function or class with a recorded signature (existence is checked apart)
        problem = _signature_problem(tokens, *need.extra)
        return (f"{need.target} {problem}", "") if problem else None
    if k == "self":
        methods: Set[str] = set(dir(object))
        for base in need.target.split(","):
            found = api.py_methods(base)
            if found is None:
                return None  # a base we do not know: cannot tell
            methods |= found
        if need.name in methods:
            return None
        return (f"neither the class nor its Slicer base(s) {need.target} define {need.name}",
                _closest(need.name, methods))
    raise AssertionError(k)


def check_source(source: str, path: str, apis: Dict[str, SlicerApi],
                 ui_classes: Optional[Dict[str, str]] = None) -> List[Finding]:
    """Every Slicer API name `source` uses that one of the releases lacks."""
    collector = _Collector(source, ui_classes or {})
    tree = ast.parse(source, filename=path)
    collector.collect_imports(tree)
    collector.visit(tree)
    findings = []
    for need in collector.needs:
        missing: Dict[str, Tuple[str, str]] = {}
        for tag, api in apis.items():
            problem = _problem(need, api)
            if problem:
                missing[tag] = problem
        if missing:
            what = sorted({p for p, _ in missing.values()})
            hint = next((h for _, h in missing.values() if h), "")
            present = [tag for tag in apis if tag not in missing]
            if present:
                hint = f" (it exists in Slicer {', '.join(present)}){hint}"
            findings.append(Finding(path, need.line, need.code,
                                    f"{'; '.join(what)} in Slicer {', '.join(missing)}{hint}"))
    return findings


def ui_widget_classes(ui_path: Path) -> Dict[str, str]:
    return {w.get("name"): w.get("class") for w in ET.parse(ui_path).iter("widget")}


def check_ui(ui_path: Path, apis: Dict[str, SlicerApi]) -> List[Finding]:
    """Properties, signals and slots the .ui uses on Slicer/CTK widgets; node class names it lists."""
    tree = ET.parse(ui_path)
    classes = ui_widget_classes(ui_path)
    lines = ui_path.read_text(encoding="utf-8").splitlines()
    rel = ui_path.relative_to(ROOT).as_posix() if ui_path.is_relative_to(ROOT) else str(ui_path)
    findings: List[Finding] = []

    def line_of(text: str, after: int = 0) -> int:
        """The first line after line `after` holding `text` (the .ui's elements come in file order)."""
        return next((i + 1 for i in range(after, len(lines)) if text in lines[i]), after)

    def report(line: int, code: str, check) -> None:
        missing = {tag: r for tag, api in apis.items() if (r := check(api))}
        if missing:
            what = sorted({p for p, _ in missing.values()})
            hint = next((h for _, h in missing.values() if h), "")
            findings.append(Finding(rel, line, code, f"{'; '.join(what)} in Slicer {', '.join(missing)}{hint}"))

    def has(cls: str, member: str, kinds: Tuple[str, ...], what: str):
        def check(api: SlicerApi):
            if cls not in api.classes:
                return None  # a plain Qt class: not checked
            names = api.members(cls, kinds)
            return None if member in names else (f"{cls} has no {what} {member}", _closest(member, names))
        return check

    widget_line = 0
    for widget in tree.iter("widget"):
        cls, name = widget.get("class"), widget.get("name")
        widget_line = line_of(f'name="{name}"', widget_line)
        prop_line = widget_line
        for prop in widget.findall("property"):
            pname = prop.get("name")
            prop_line = line_of(f'<property name="{pname}"', prop_line)
            if pname not in UI_DYNAMIC_PROPERTIES:
                report(prop_line, f"{name} ({cls}) property {pname}", has(cls, pname, ("properties",), "Q_PROPERTY"))
            string_line = prop_line
            for value in prop.iter("string"):
                text = (value.text or "").strip()
                string_line = line_of(f"<string>{text}</string>", string_line)
                if re.fullmatch(r"vtkMRML\w+", text):
                    report(string_line, f"{name}.{pname}: {text}",
                           lambda api, t=text: None if t in api.all_classes else
                           (f"no class {t} in Slicer", _closest(t, api.all_classes)))
    conn_line = 0
    for conn in tree.iter("connection"):
        conn_line = line_of("<connection>", conn_line)
        sender, signal = conn.findtext("sender"), conn.findtext("signal").split("(")[0]
        receiver, slot = conn.findtext("receiver"), conn.findtext("slot").split("(")[0]
        code = f"connection {sender}.{signal} -> {receiver}.{slot}"
        report(line_of("<signal>", conn_line), code, has(classes.get(sender, ""), signal, ("signals",), "signal"))
        report(line_of("<slot>", conn_line), code, has(classes.get(receiver, ""), slot, ("classes",), "slot"))
    return findings


# -- tests -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def apis() -> Dict[str, SlicerApi]:
    return load_apis()


@pytest.fixture(scope="module")
def ui_classes() -> Dict[str, str]:
    return ui_widget_classes(MODULE / UI_FILE)


def test_vendored_api_files_are_whole(apis):
    for tag, api in apis.items():
        d = api.data
        assert d["tag"] == tag and re.fullmatch(r"[0-9a-f]{40}", d["commit"]), f"slicer-{tag}.json: tag/commit"
        for cls in ("vtkMRMLScene", "vtkMRMLNode", "vtkMRMLVolumeNode", "vtkMRMLSegmentationNode", "vtkSegmentation",
                    "vtkSegment", "vtkMRMLSequenceBrowserNode", "vtkSlicerSequencesLogic", "qMRMLNodeComboBox",
                    "qSlicerMarkupsPlaceWidget", "qSlicerApplication", "ctkDICOMDatabase"):
            assert api.classes.get(cls), f"slicer-{tag}.json has no methods for {cls}: regenerate it"
        for module in ("slicer.util", "DICOMLib.DICOMUtils", "slicer.parameterNodeWrapper", "slicer"):
            assert api.python.get(module), f"slicer-{tag}.json has no names for {module}"
    size = sum((API_DIR / f"slicer-{t}.json").stat().st_size for t in TAGS)
    assert size < 400_000, f"the vendored API is {size} bytes: keep it to the classes the module needs"


@pytest.mark.parametrize("rel", MODULE_FILES)
def test_module_calls_exist_in_supported_slicer(rel, apis, ui_classes):
    path = MODULE / rel
    findings = check_source(path.read_text(encoding="utf-8"), f"USVLMSegment/{rel}", apis, ui_classes)
    assert not findings, "Slicer API names that do not exist:\n" + "\n".join(map(str, findings))


def test_ui_properties_signals_and_slots_exist(apis):
    findings = check_ui(MODULE / UI_FILE, apis)
    assert not findings, "the .ui uses Slicer/CTK names that do not exist:\n" + "\n".join(map(str, findings))


@pytest.mark.parametrize("cls,prop,header", REQUIRED_PROPERTIES)
def test_required_widget_properties_are_q_properties(cls, prop, header, apis):
    for tag, api in apis.items():
        assert api.data["headers"].get(cls) == header, f"{cls}: header {api.data['headers'].get(cls)} in {tag}"
        assert prop in api.members(cls, ("properties",)), f"{cls}.{prop} is no Q_PROPERTY in {header} ({tag})"


def test_allow_list_is_not_redundant(apis):
    redundant = sorted(m for m in VTK_CORE_METHODS if all(m in api.union_methods for api in apis.values()))
    assert not redundant, f"VTK_CORE_METHODS entries found in the extracted MRML data, remove them: {redundant}"


BROKEN = '''
import slicer
from slicer.util import arrayFromVolume, VTKObservationMixn
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from DICOMLib import DICOMUtils


class W(ScriptedLoadableModuleWidget):
    def setup(self):
        self.resourcePth("UI/x.ui")
        self.ui.inputSelector.hideChildNodeType = ["vtkMRMLLabelMapVolumeNode"]
        self.ui.inputSelector.setCurrentNode(None)


def f(browser, volume, segment):
    browser.GetSelectedItemNumbr()
    browser.GetSelectedItemNumber()
    a = slicer.util.arrayFromVolumee(volume)
    slicer.util.arrayFromVolume(volume)
    with slicer.util.tryWithErrorDisplay("x", waitCursr=True):
        slicer.util.arrayFromVolume(volume, 0)
    slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentatonNode")
    slicer.mrmlScene.AddObserver(slicer.mrmlScene.StartClosEvent, f)
    slicer.modules.sequences.logic().GetFirstBrowserNodeForProxyNod(volume)
    slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent
    slicer.vtkMRMLMarkupNode
    slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode().GetSliceToRAS()
    slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode().GetSliceToRS()
    slicer.app.layoutManager().sliceWidgt("Red")
    DICOMUtils.loadSeriesByUIDs([])
    slicer.dicomDatabase.fileForInstanc("1.2")
    segment.SetTerminology("x")  # Slicer 5.10 only
    import DICOMLib.DICOMUtils
    DICOMLib.DICOMUtils.loadSeriesByUID([])
    DICOMLib.DICOMUtils.loadSeriesByUId([])
'''


def test_checker_reports_wrong_names(apis):
    """Each wrong name in BROKEN is reported with the release(s) and the closest real name; the
    correct spellings beside them are not."""
    findings = check_source(BROKEN, "broken.py", apis, {"inputSelector": "qMRMLNodeComboBox"})
    text = "\n".join(map(str, findings))
    lines = BROKEN.splitlines()
    expected = [  # (text on the line, words the finding must hold)
        ("browser.GetSelectedItemNumbr()", ("GetSelectedItemNumbr is not a method", "closest: GetSelectedItemNumber")),
        ("slicer.util.arrayFromVolumee", ("slicer.util has no arrayFromVolumee", "closest: arrayFromVolume")),
        ("VTKObservationMixn", ("slicer.util has no VTKObservationMixn", "VTKObservationMixin")),
        ("self.resourcePth", ("define resourcePth", "resourcePath")),
        ("hideChildNodeType =", ("qMRMLNodeComboBox (and its bases) has no property", "hideChildNodeTypes")),
        ("waitCursr", ("no keyword argument 'waitCursr'", "waitCursor")),
        ("arrayFromVolume(volume, 0)", ("slicer.util.arrayFromVolume takes at most 1 positional argument",)),
        ("vtkMRMLSegmentatonNode", ("no class vtkMRMLSegmentatonNode", "vtkMRMLSegmentationNode")),
        ("StartClosEvent", ("vtkMRMLScene (and its bases) has no StartClosEvent", "StartCloseEvent")),
        ("ForProxyNod(", ("vtkSlicerSequencesLogic (and its bases) has no", "GetFirstBrowserNodeForProxyNode")),
        ("slicer.vtkMRMLMarkupNode", ("no class vtkMRMLMarkupNode", "vtkMRMLMarkupsNode")),
        ("sliceWidgt", ("qSlicerLayoutManager (and its bases) has no sliceWidgt", "sliceWidget")),
        ("mrmlSliceNode().GetSliceToRS", ("vtkMRMLSliceNode (and its bases) has no GetSliceToRS", "GetSliceToRAS")),
        ("loadSeriesByUIDs", ("DICOMLib.DICOMUtils has no loadSeriesByUIDs", "loadSeriesByUID")),
        ("fileForInstanc(", ("ctkDICOMDatabase (and its bases) has no fileForInstanc", "fileForInstance")),
        ("SetTerminology", ("SetTerminology is not a method", "in Slicer v5.8.1 (it exists in Slicer v5.10.0)")),
        ("loadSeriesByUId(", ("DICOMLib.DICOMUtils has no loadSeriesByUId", "loadSeriesByUID")),
    ]
    reported = set()
    for snippet, words in expected:
        line = next(i + 1 for i, text_line in enumerate(lines) if snippet in text_line)
        hits = [f for f in findings if f.line == line and all(w in str(f) for w in words)]
        assert hits, f"line {line} ({snippet}) not reported with {words}; got:\n{text}"
        if "SetTerminology" not in snippet:
            assert "in Slicer v5.8.1, v5.10.0" in str(hits[0]), str(hits[0])
        reported.add(line)
    assert {f.line for f in findings} == reported, text


@pytest.mark.parametrize("rel", MODULE_FILES)
def test_every_checked_name_in_the_module_is_caught_when_misspelt(rel, apis, ui_classes):
    """The check above is not vacuous: each distinct Slicer name the file uses, misspelt in place
    (one at a time, "Zq" appended), is reported on its line."""
    source = (MODULE / rel).read_text(encoding="utf-8")
    collector = _Collector(source, ui_classes)
    tree = ast.parse(source)
    collector.collect_imports(tree)
    collector.visit(tree)
    api = apis[TAGS[0]]
    seen, tried, missed = set(), 0, []
    lines = source.split("\n")
    for need in collector.needs:
        key = (need.kind, need.target, need.name)
        if need.end is None or key in seen:
            continue
        seen.add(key)
        wrong = need.name + "Zq"
        if _problem(Need(need.line, need.code, need.kind, need.target, wrong, need.extra), api) is None:
            continue  # not checkable by design (a plain Qt widget, an unmodelled return type)
        line, col = need.end
        raw = lines[line - 1].encode("utf-8")
        assert raw[col - len(need.name.encode()):col].decode() == need.name, (need, raw)
        mutated = lines[:line - 1] + [(raw[:col] + b"Zq" + raw[col:]).decode("utf-8")] + lines[line:]
        findings = check_source("\n".join(mutated), rel, apis, ui_classes)
        tried += 1
        if not any(f.line == line and wrong in str(f) for f in findings):
            missed.append(f"{rel}:{line}: {need.code} -> {wrong}")
    assert not missed, "misspelt names not reported:\n" + "\n".join(missed)
    if any(n.kind != "python" for n in collector.needs):
        assert tried, f"{rel}: no Slicer name was checked"


def test_ui_checker_reports_wrong_names(apis, tmp_path):
    ui = (MODULE / UI_FILE).read_text(encoding="utf-8")
    for right, wrong in (('<property name="hideChildNodeTypes">', '<property name="hideChildNodeType">'),
                         ("<string>vtkMRMLVectorVolumeNode</string>", "<string>vtkMRMLVectorVolumNode</string>"),
                         ("<slot>setMRMLScene(vtkMRMLScene*)</slot>", "<slot>setMRMLScen(vtkMRMLScene*)</slot>")):
        assert right in ui, right
        ui = ui.replace(right, wrong, 1)
    path = tmp_path / "broken.ui"
    path.write_text(ui, encoding="utf-8")
    findings = check_ui(path, apis)
    text = "\n".join(map(str, findings))
    lines = ui.splitlines()
    for snippet, words in (('"hideChildNodeType"', "qMRMLNodeComboBox has no Q_PROPERTY hideChildNodeType"),
                           ("vtkMRMLVectorVolumNode", "no class vtkMRMLVectorVolumNode"),
                           ("setMRMLScen(", "qMRMLNodeComboBox has no slot setMRMLScen")):
        line = next(i + 1 for i, text_line in enumerate(lines) if snippet in text_line)
        assert any(f.line == line and words in str(f) for f in findings), f"{snippet} (line {line}) not reported:\n{text}"
    assert len(findings) == 3, text
