"""docs/qmp.md is generated from the registries a `kvmkit run` monitor really has, and is kept current."""

from __future__ import annotations

from pathlib import Path

from kvmkit.monitor.docgen import machine_registries, render_markdown

DOCS = Path(__file__).resolve().parents[3] / "docs" / "qmp.md"


def test_reference_lists_every_command_and_event_with_their_members() -> None:
    commands, events = machine_registries()
    text = render_markdown(commands, events)
    assert {"set_link", "query-net-stats"} <= set(commands.names())  # added by the machine, not the monitor
    for spec in commands.specs():
        assert f"### `{spec.name}`" in text
        for member in spec.arguments.members:
            assert f"| `{member.name}` |" in text, (spec.name, member.name)
    for event in events.specs():
        assert f"### `{event.name}`" in text
        for member in event.data.members:
            assert f"| `{member.name}` |" in text, (event.name, member.name)


def test_docs_qmp_md_is_up_to_date() -> None:
    assert DOCS.read_text() == render_markdown(*machine_registries()), \
        "docs/qmp.md is stale: regenerate it with `make docs` (python -m kvmkit.monitor.docgen > docs/qmp.md)"
