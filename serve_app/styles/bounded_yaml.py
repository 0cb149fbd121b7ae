"""YAML read within limits (size, nesting depth, nodes with every alias expanded, no tags, no duplicate keys),
refused before any Python object is built: what a curator's upload may cost the service."""

from __future__ import annotations

import yaml

MAX_YAML_DEPTH = 20  # a real manifest nests 2 deep
MAX_YAML_NODES = 10_000  # with every alias expanded; a real manifest has about 40
# libyaml's parser when PyYAML has it: the pure-Python scanner costs about 0.1 ms a node, so a manifest at the node
# limit would hold the ingress's GIL for a second or more.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_events(text: str) -> None:
    """Nesting depth, node count and tags from the event stream, before anything is composed (PyYAML's composer
    recurses once per level). Tags are refused: a manifest needs none, and PyYAML's constructors fail with
    arbitrary exceptions on a malformed explicitly tagged scalar (``!!bool x``, ``!!timestamp x``)."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=SAFE_LOADER):
        if isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            continue
        if not isinstance(event, yaml.NodeEvent) or isinstance(event, yaml.AliasEvent):
            continue
        if event.tag is not None:
            raise ValueError(f"YAML tags such as {event.tag!r} are not allowed")
        nodes += 1
        depth += isinstance(event, yaml.CollectionStartEvent)
        if depth > MAX_YAML_DEPTH:
            raise ValueError(f"nested deeper than {MAX_YAML_DEPTH} levels")
        if nodes > MAX_YAML_NODES:
            raise ValueError(f"more than {MAX_YAML_NODES} YAML nodes")


def _check_unique_keys(node: yaml.MappingNode) -> None:
    """PyYAML would keep the last of two equal keys. Only the keys written in this mapping are compared: a key that
    overrides one brought in by a merge (``<<: *base``) is YAML's way to override, and ``<<`` is no field."""
    seen: set[tuple[str, str]] = set()
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == MERGE_TAG:
            continue
        if (key.tag, key.value) in seen:
            raise ValueError(f"duplicate key {key.value!r} (line {key.start_mark.line + 1})")
        seen.add((key.tag, key.value))


def _expanded(node: yaml.Node, done: dict[int, tuple[int, int]], open_nodes: set[int]) -> tuple[int, int]:
    """(node count, depth) of ``node`` with every alias expanded, memoised per node so that a "billion laughs"
    costs its size in the document, not its expansion. Aliases only point back in the document, so this recursion
    stays as shallow as the document's own nesting; a node met again while still open contains itself."""
    if id(node) in done:
        return done[id(node)]
    if id(node) in open_nodes:
        raise ValueError("a YAML alias refers to a node that contains it (recursive alias)")
    open_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        _check_unique_keys(node)
        children = [child for pair in node.value for child in pair]
    else:
        children = node.value if isinstance(node, yaml.SequenceNode) else []
    counts = [_expanded(child, done, open_nodes) for child in children]
    size = 1 + sum(count for count, _ in counts)
    depth = isinstance(node, yaml.CollectionNode) + max((deep for _, deep in counts), default=0)
    if size > MAX_YAML_NODES:
        raise ValueError(f"expands to more than {MAX_YAML_NODES} YAML nodes (aliases counted where they are used)")
    if depth > MAX_YAML_DEPTH:
        raise ValueError(f"nested deeper than {MAX_YAML_DEPTH} levels once aliases are expanded")
    open_nodes.discard(id(node))
    done[id(node)] = size, depth
    return size, depth


def load_mapping(data: bytes, max_bytes: int) -> dict[str, object]:
    """The YAML mapping in ``data``, refused (ValueError or YAMLError) past ``max_bytes``, the depth and the
    expansion limits, or with a duplicate key, before any Python object is built from it."""
    if len(data) > max_bytes:
        raise ValueError(f"over the limit of {max_bytes} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    _check_events(text)
    loader = SAFE_LOADER(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _expanded(node, {}, set())
        loaded = None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()
    if not isinstance(loaded, dict) or not all(isinstance(key, str) for key in loaded):
        raise ValueError("not a YAML mapping of field names to values")
    return loaded
