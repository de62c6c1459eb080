"""CONTRIBUTING.md's sync-file reference is checked against the real models, so the docs cannot drift.

Every fenced ```yaml block in CONTRIBUTING.md must be one of: a whole sync file (validated by
batchkit.sync_spec.SyncSpec, and naming every field the models have), a list of pagination styles
(validated by batchkit.extract.pagination.parse_pagination, one per style, each with every field), or
a fragment of a sync file (validated merged into the repo's own sync file). Each `# default: X` comment
must be the model's default, and the prose may only name pagination styles that exist.
"""

from __future__ import annotations

import copy
import re
import textwrap
import types
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from batchkit.extract.pagination import STYLES_WITHOUT_RECORDS_DEFAULT, Pagination, parse_pagination
from batchkit.sync_spec import SyncSpec
from tools.metadb import REPO_ROOT

CONTRIBUTING = REPO_ROOT / "CONTRIBUTING.md"
REPO_SYNC = REPO_ROOT / "include" / "automations" / "sales_orders_sync.yaml"
YAML_BLOCK = re.compile(r"^(?P<indent>[ ]*)```yaml\n(?P<body>.*?)^(?P=indent)```", re.MULTILINE | re.DOTALL)
DEFAULT_COMMENT = re.compile(
    r"^(?P<indent>[ ]*)(?P<key>[a-z_]+):.*#\s*default:\s*(?P<value>.+?)(?:\s+\(.*)?$"
)
KEY_LINE = re.compile(r"^(?P<indent>[ ]*)(?P<key>[a-z_]+):")


def yaml_blocks() -> list[str]:
    text = CONTRIBUTING.read_text(encoding="utf-8")
    return [textwrap.dedent(match["body"]) for match in YAML_BLOCK.finditer(text)]


def pagination_styles() -> dict[str, type[BaseModel]]:
    """style name -> model, read from the Pagination union itself."""
    union = get_args(Pagination)[0]
    return {get_args(model.model_fields["style"].annotation)[0]: model for model in get_args(union)}


def model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (through Annotated and Optional), if exactly one."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        models = [model_of(arg) for arg in get_args(annotation) if arg is not type(None)]
        return models[0] if len(models) == 1 else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def missing_fields(model: type[BaseModel], data: Any, path: str) -> Iterator[str]:
    """Every field of `model` (and of the models nested in it) that `data` does not state."""
    for name, field in model.model_fields.items():
        where = f"{path}{name}"
        if name not in data:
            yield where
            continue
        value, annotation = data[name], field.annotation
        if (nested := model_of(annotation)) is not None and isinstance(value, dict):
            yield from missing_fields(nested, value, f"{where}.")
        elif get_origin(annotation) is dict and (nested := model_of(get_args(annotation)[1])) is not None:
            for key, item in value.items():
                yield from missing_fields(nested, item, f"{where}.{key}.")
        elif get_origin(annotation) is list and (nested := model_of(get_args(annotation)[0])) is not None:
            for index, item in enumerate(value):
                yield from missing_fields(nested, item, f"{where}[{index}].")


def field_default(model: type[BaseModel], name: str) -> Any:
    field = model.model_fields[name]
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return default.model_dump(mode="json")
    return getattr(default, "value", default)


def stated_defaults(block: str) -> Iterator[tuple[list[str], str, Any]]:
    """(parent path, key, stated default) of every `key: ...  # default: X` line of a block."""
    parents: list[tuple[int, str]] = []
    for line in block.splitlines():
        if not (key_line := KEY_LINE.match(line)):
            continue
        indent = len(key_line["indent"])
        parents = [(level, key) for level, key in parents if level < indent]
        if match := DEFAULT_COMMENT.match(line):
            yield [key for _, key in parents], match["key"], yaml.safe_load(match["value"])
        parents.append((indent, key_line["key"]))


def model_at(path: list[str]) -> type[BaseModel]:
    model: type[BaseModel] = SyncSpec
    for key in path:
        nested = model_of(model.model_fields[key].annotation)
        assert nested is not None, f"{'.'.join(path)} is not a section of the sync file"
        model = nested
    return model


def is_sync_file(document: Any) -> bool:
    return isinstance(document, dict) and "dag_id" in document


def is_pagination_list(document: Any) -> bool:
    return isinstance(document, list) and all(isinstance(item, dict) and "style" in item for item in document)


def test_contributing_has_the_reference_blocks() -> None:
    documents = [yaml.safe_load(block) for block in yaml_blocks()]

    assert any(is_sync_file(document) for document in documents), "no whole sync file in CONTRIBUTING.md"
    assert any(is_pagination_list(document) for document in documents), "no pagination styles block"


@pytest.mark.parametrize("block", yaml_blocks(), ids=lambda block: block.splitlines()[0][:40])
def test_every_yaml_block_validates_against_the_models(block: str) -> None:
    document = yaml.safe_load(block)
    if is_sync_file(document):
        SyncSpec.model_validate(document)
        assert list(missing_fields(SyncSpec, document, "")) == [], "fields the reference does not show"
    elif is_pagination_list(document):
        styles = pagination_styles()
        assert sorted(item["style"] for item in document) == sorted(styles), "one entry per style"
        for item in document:
            parsed = parse_pagination(item)
            model = styles[item["style"]]
            assert sorted(item) == sorted(model.model_fields), f"{item['style']}: every field, no other"
            # The values shown are the defaults (the style's own name aside).
            for name, value in item.items():
                if name != "style":
                    assert value == field_default(model, name), f"{item['style']}.{name}: default"
            assert parsed.model_dump() == item
    else:
        assert isinstance(document, dict), (
            f"a yaml block that is neither a sync file nor a fragment:\n{block}"
        )
        assert set(document) <= set(SyncSpec.model_fields), f"not sync-file sections: {sorted(document)}"
        merged = copy.deepcopy(yaml.safe_load(REPO_SYNC.read_text(encoding="utf-8")))
        for section, value in document.items():
            if isinstance(value, dict) and isinstance(merged.get(section), dict):
                merged[section] = {**merged[section], **value}
            else:
                merged[section] = value
        SyncSpec.model_validate(merged)


def test_every_stated_default_is_the_models() -> None:
    stated_lines = [stated for block in yaml_blocks() for stated in stated_defaults(block)]
    # The reference states the defaults of the optional fields: something must have been checked.
    assert len(stated_lines) >= 20, stated_lines
    for parents, key, stated in stated_lines:
        model = model_at(parents)
        assert key in model.model_fields, f"{'.'.join([*parents, key])}: no such field"
        actual = field_default(model, key)
        assert stated == actual, (
            f"{'.'.join([*parents, key])}: CONTRIBUTING says {stated!r}, the model {actual!r}"
        )


def test_the_prose_names_only_pagination_styles_that_exist() -> None:
    text = CONTRIBUTING.read_text(encoding="utf-8")
    styles = set(pagination_styles())
    # The sentence that lists the styles names each of them, and nothing else, in backticks.
    listed = re.search(r"`style`:\s*(?P<names>(?:`[a-z_]+`(?:,\s*|\s+or\s+)?)+)", text)
    assert listed is not None, "CONTRIBUTING no longer lists the pagination styles"
    assert set(re.findall(r"`([a-z_]+)`", listed["names"])) == styles
    for style in STYLES_WITHOUT_RECORDS_DEFAULT:
        assert f"`{style}` has no default" in text
    for name in re.findall(r"\{style: ([a-z_]+)", text):
        assert name in styles, f"CONTRIBUTING names pagination style {name!r}; there are {sorted(styles)}"


def test_a_drifted_reference_would_fail() -> None:
    """The checks above catch what drifted before: a style renamed, a field missing, a wrong default."""
    styles = pagination_styles()
    assert "link" not in styles
    with pytest.raises(ValueError, match="does not match any of the expected tags"):
        parse_pagination({"style": "link"})
    sync = next(yaml.safe_load(block) for block in yaml_blocks() if is_sync_file(yaml.safe_load(block)))
    del sync["source"]["retry"]["max_attempts"]
    assert list(missing_fields(SyncSpec, sync, "")) == ["source.retry.max_attempts"]
    drifted = "source:\n  retry:\n    budget_seconds: 600  # default: 600\n"
    [(parents, key, stated)] = stated_defaults(drifted)
    assert (parents, key) == (["source", "retry"], "budget_seconds")
    assert stated != field_default(model_at(parents), key)


def test_style_literals_are_the_union_members() -> None:
    for name, model in pagination_styles().items():
        assert model.model_fields["style"].annotation == Literal[name]
