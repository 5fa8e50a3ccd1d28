"""`llm lmstudio route`: the router's decision for a prompt, explained (task, ranked candidates, exclusions, chain),
or --json for scripts. Plans only, through router.py: it never sends the prompt to a model."""

import sys

import click

from llm_lmstudio.cli.common import echo_json


@click.command(name="route")
@click.argument("prompt", required=False)
@click.option("-s", "--system", help="System prompt, as the router would see it")
@click.option("-a", "--attachment", "attachments", multiple=True, help="Attachment path or URL (images need a vision model)")
@click.option("--tools", "needs_tools", is_flag=True, help="Route as if the prompt offered tools (-T)")
@click.option("--schema", "needs_schema", is_flag=True, help="Route as if the prompt had a --schema")
@click.option("--task", help="Skip classification: route as this task")
@click.option("json_", "--json", is_flag=True, help="Output the decision as JSON")
@click.option("--explain", is_flag=True, help="Also show each candidate's record: which failures count against it, which do not, and why")
@click.option("--warm", is_flag=True, help="Embed the classifier's exemplars now, showing progress on stderr")
def route(prompt, system, attachments, needs_tools, needs_schema, task, json_, explain, warm):
    """Show how the router would handle PROMPT, without running it.

    Prints the task and confidence, the classifier used, every candidate with its score and
    reasons, excluded models and why, and the fallback chain. Reads the prompt from standard
    input when it is not given. Exits 1 when no model could take the prompt.

    \b
    Examples:
        llm lmstudio route "Write a Python function that parses ISO dates"
        cat error.log | llm lmstudio route --json
        llm lmstudio route --explain "Summarise this file"
        llm lmstudio route --warm
    """
    import llm

    from llm_lmstudio.router import classifier_setup
    from llm_lmstudio.router import planning
    from llm_lmstudio.router import model as router_model
    from llm_lmstudio.core import settings
    from llm_lmstudio.router import config as router_config

    try:
        config = router_config.load()
    except settings.SettingsError as exc:
        raise click.ClickException(str(exc))
    if warm:
        def progress(done, total):
            click.echo(f"\rrouter: embedded {done}/{total} new exemplars", err=True, nl=done == total)

        try:
            model_id, note = classifier_setup.warm(config, progress=progress)
        except Exception as exc:  # noqa: BLE001 - one line, whatever the embedding model raised
            raise click.ClickException(f"embedding the router's exemplars failed: {exc}")
        click.echo(f"router: exemplar vectors ready for {model_id}" if model_id else f"router: nothing to warm ({note})", err=True)
        if prompt is None:
            return
    if prompt is None:
        if sys.stdin.isatty():
            raise click.UsageError("give a PROMPT or pipe one in")
        prompt = sys.stdin.read()
    model = router_model.Router()
    resolved = []
    for value in attachments:
        if value.startswith(("http://", "https://")):
            resolved.append(llm.Attachment(url=value))
        else:
            resolved.append(llm.Attachment(path=value))
    tools = [llm.Tool(name="tool", description="", input_schema={"type": "object"}, implementation=lambda: "")] if needs_tools else None
    fake_prompt = llm.Prompt(
        prompt,
        model,
        system=system,
        attachments=resolved,
        tools=tools,
        schema={"type": "object"} if needs_schema else None,
        options=model.Options(),
    )
    from llm_lmstudio.core.messages import EMPTY_PROMPT, build_messages

    if not build_messages(fake_prompt):  # what `llm -m router ""` answers, before any plan
        raise click.ClickException(f"{router_model.ROUTER_ID}: {EMPTY_PROMPT}")
    try:
        plan = planning.make_plan(fake_prompt, config, task)
    except llm.ModelError as exc:
        raise click.ClickException(str(exc))
    data = plan.to_json(explain=explain)
    if json_:
        echo_json(data)
    else:
        _print_plan(data, explain)
    if not data["chain"]:
        raise click.ClickException(plan.why_empty())


def _print_plan(data: dict, explain: bool) -> None:
    click.echo(f"Task: {data['task']} (confidence {data['confidence']:.2f}, {data['classifier']} classifier)")
    if data["classifier_note"]:
        click.echo(f"  note: {data['classifier_note']}")
    for problem in data["problems"]:
        click.echo(f"  server: {problem}")
    click.echo("Candidates:")
    several = len({c["server"] for c in data["candidates"]}) > 1
    for candidate in data["candidates"]:
        marker = "*" if candidate["model"] == data["chosen"] else " "
        where = f"  on {candidate['server']}" if candidate["kind"] == "lmstudio" and several else ""
        click.echo(f" {marker} {candidate['score']:7.1f}  {candidate['model']}" + ("  [loaded]" if candidate["loaded"] else "") + where)
        for reason in candidate["reasons"]:
            click.echo(f"              {reason}")
        if explain:
            _print_history(candidate["history"])
    if not data["candidates"]:
        click.echo("   (none)")
    for item in data["excluded"]:
        click.echo(f"   excluded: {item['model']}: {item['reason']}")
    click.echo("Chain: " + (" -> ".join(data["chain"]) if data["chain"] else "(empty: nothing can answer this prompt)"))


def _print_history(history: dict) -> None:
    from llm_lmstudio.store.reliability import age_text

    pad = " " * 14
    if not history["counted"] and not history["not_counted"] and not history["successes_weight"]:
        click.echo(f"{pad}history: nothing recorded yet")
        return
    click.echo(f"{pad}history: failures weigh {history['failures_weight']:.2f} against {history['successes_weight']:.2f} successes "
               f"(each halves every {history['half_life_hours']:g} h) -> penalty {history['penalty']:.1f}")
    if history["counted"]:
        shown = ", ".join(f"{c['kind']} {age_text(c['age_seconds'])} ago ({c['source']})" for c in history["counted"][:5])
        more = f", and {len(history['counted']) - 5} more" if len(history["counted"]) > 5 else ""
        click.echo(f"{pad}  counted: {shown}{more}")
    for kind, item in history["not_counted"].items():
        click.echo(f"{pad}  not counted: {item['count']} {kind} ({item['why']})")
