"""The demo's report, for a finance person: the invoices as VINR and the ledger see them, before
and after reconciliation, the drift corrected, the trial balance, the alerts and callbacks."""

from __future__ import annotations

from collections import Counter, defaultdict

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ledger.accounts import ACCOUNTS
from vinr_recon.demo.processes import Child

FIELDS = ("status", "currency", "total", "amountPaid", "amountDue")


def money(amount: int | None, currency: str = "") -> str:
    """Minor units as `1,960.00` (two decimals, as EUR, CHF and USD have); never a float."""
    if amount is None:
        return "—"
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(int(amount)), 100)
    return f"{currency + ' ' if currency else ''}{sign}{major:,}.{minor:02d}"


def differences(ledger: dict | None, vinr: dict) -> list[str]:
    """The fields where the ledger's view differs from VINR's invoice ([] when they agree)."""
    if ledger is None:
        return ["missing"]
    return [name for name in FIELDS if ledger.get(name) != vinr.get(name)]


def _position(view: dict | None, vinr: dict) -> Text:
    if view is None:
        return Text("never seen", style="bold red")
    wrong = set(differences(view, vinr))
    text = Text()
    text.append(view["status"], style="bold red" if "status" in wrong else "")
    text.append("\npaid ")
    text.append(money(view["amountPaid"]), style="bold red" if "amountPaid" in wrong else "")
    text.append("  due ")
    text.append(money(view["amountDue"]), style="bold red" if "amountDue" in wrong else "")
    if "total" in wrong:
        text.append(f"\ntotal {money(view['total'])}", style="bold red")
    return text


def _tick(ok: bool) -> Text:
    return Text("✓", style="bold green") if ok else Text("✗", style="bold red")


def invoices_table(outcome) -> Table:
    table = Table(title="Invoices: VINR beside the ledger", title_justify="left", show_lines=True)
    table.add_column("Invoice")
    table.add_column("Total", justify="right")
    table.add_column("VINR says")
    table.add_column("Ledger before reconciliation")
    table.add_column("Ledger after reconciliation")
    table.add_column("", justify="center")
    for inv in outcome.story:
        vinr = outcome.vinr[inv.id]
        label = Text(inv.label)
        label.append(f"\n{vinr.get('number') or ''} {inv.id}", style="dim")
        said = Text(f"{vinr['status']}\npaid {money(vinr['amountPaid'])}  due {money(vinr['amountDue'])}")
        after_ok = not differences(outcome.after.get(inv.id), vinr)
        table.add_row(label, money(vinr["total"], vinr["currency"]), said,
                      _position(outcome.before.get(inv.id), vinr), _position(outcome.after.get(inv.id), vinr),
                      _tick(after_ok))
    return table


def deliveries_line(outcome) -> str:
    events = outcome.events
    sent = [e for e in events if e.get("deliveryAttempts")]
    copies = sum(len({a["copy"] for a in e["deliveryAttempts"]}) for e in sent)
    duplicates = copies - len(sent)
    retries = sum(max(0, len(e["deliveryAttempts"]) - len({a["copy"] for a in e["deliveryAttempts"]})) for e in sent)
    dropped = [e for e in events if not e.get("deliveryAttempts")]
    by_type = Counter(e["type"] for e in dropped)
    lost = ", ".join(f"{n}× {t}" for t, n in sorted(by_type.items())) or "none"
    return (f"VINR emitted {len(events)} events; {len(sent)} were delivered, {duplicates} of them more than once "
            f"({copies} deliveries, {retries} retried); {len(dropped)} never arrived ({lost}).")


def drift_table(outcome) -> Table | None:
    rows = []
    for inv in outcome.story:
        vinr, before, after = outcome.vinr[inv.id], outcome.before.get(inv.id), outcome.after.get(inv.id)
        wrong = differences(before, vinr)
        if not wrong:
            continue
        if before is None:
            found = f"not in the ledger; VINR: {vinr['status']}"
        else:
            found = "; ".join(
                f"{name} {before.get(name) if name in ('status', 'currency') else money(before.get(name))} → "
                f"{vinr.get(name) if name in ('status', 'currency') else money(vinr.get(name))}"
                for name in wrong)
        fixes = []
        if after is not None:
            backfilled = [e["type"] for e in after.get("events", []) if e.get("source") == "backfill"]
            corrections = [e for e in after.get("corrections", [])]
            if backfilled:
                fixes.append("missed events backfilled: " + ", ".join(backfilled))
            if corrections:
                fixes.append(f"{len(corrections)} correcting journal entr{'y' if len(corrections) == 1 else 'ies'}")
        rows.append((inv.label, found, "; ".join(fixes) or "—", _tick(not differences(after, vinr))))
    if not rows:
        return None
    table = Table(title="Drift found and corrected by reconciliation", title_justify="left")
    table.add_column("Invoice")
    table.add_column("Ledger → VINR")
    table.add_column("Corrected by")
    table.add_column("", justify="center")
    for row in rows:
        table.add_row(*row)
    return table


def balance_checks(outcome) -> dict[str, list[tuple[str, bool]]]:
    """Per currency: debits equal credits; receivables equal what is due on open invoices;
    cash collected equals what was paid (contract section 6)."""
    by_currency: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in outcome.balances:
        by_currency[row["currency"]][row["account"]] = row
    due, paid = Counter(), Counter()
    for inv in outcome.vinr.values():
        paid[inv["currency"]] += inv["amountPaid"]
        if inv["status"] == "open":
            due[inv["currency"]] += inv["amountDue"]
    checks = {}
    for currency in sorted(set(by_currency) | set(paid)):
        accounts = by_currency.get(currency, {})
        debits = sum(r["debits"] for r in accounts.values())
        credits = sum(r["credits"] for r in accounts.values())
        receivable = accounts.get("accounts_receivable", {}).get("balance", 0)
        clearing = accounts.get("vinr_clearing", {}).get("balance", 0)
        credit = -accounts.get("customer_credit", {}).get("balance", 0)  # a credit balance
        owed = outcome.credit.get(currency, 0)
        checks[currency] = [
            (f"debits {money(debits)} = credits {money(credits)}", debits == credits),
            (f"accounts receivable {money(receivable)} = due on open invoices at VINR {money(due[currency])}",
             receivable == due[currency]),
            (f"VINR clearing {money(clearing)} = paid at VINR {money(paid[currency])}", clearing == paid[currency]),
            (f"customer credit {money(credit)} = the customer's credit balance at VINR {money(owed)}", credit == owed),
        ]
    return checks


def balance_table(outcome, currency: str) -> Table:
    table = Table(title=f"Trial balance, {currency}", title_justify="left")
    table.add_column("Account")
    table.add_column("Debits", justify="right")
    table.add_column("Credits", justify="right")
    table.add_column("Balance", justify="right")
    rows = sorted((r for r in outcome.balances if r["currency"] == currency),
                  key=lambda r: (list(ACCOUNTS).index(r["account"]) if r["account"] in ACCOUNTS else 99, r["account"]))
    for row in rows:
        table.add_row(row["account"], money(row["debits"]), money(row["credits"]), money(row["balance"]))
    table.add_row(Text("total", style="bold"), money(sum(r["debits"] for r in rows)),
                  money(sum(r["credits"] for r in rows)), money(sum(r["balance"] for r in rows)), end_section=True)
    return table


def print_mailbox(console: Console, outcome) -> None:
    box = outcome.mailbox
    console.rule("Alerts and callbacks sent by the worker")
    if not box.smtp_url:
        console.print("(no SMTP server here: install the demo's extras, pip install 'vinr-recon[demo]', to see emails)")
    if outcome.notices_pending:
        console.print(f"[yellow]{outcome.notices_pending} alert or callback jobs were still queued at the end "
                      "(the worker retries them with backoff).[/yellow]")
    if not box.count():
        console.print("Nothing arrived: no alert email, chat message or fulfilment callback was sent.")
        return
    for mail in box.emails:
        console.print(f"[bold]email[/bold] to {', '.join(mail.recipients)}: {mail.subject}")
        if mail.body:
            console.print(Text("    " + mail.body.splitlines()[0][:200], style="dim"))
    for chat in box.chats:
        console.print(f"[bold]chat[/bold]: {chat.text.splitlines()[0][:200] if chat.text else ''}")
    for callback in box.callbacks:
        body = callback.body or {}
        what = body.get("invoice") or body.get("id") or body.get("invoiceId") or ""
        if isinstance(what, dict):
            what = what.get("id", "")
        style = "green" if callback.signature == "verified" else "red"
        console.print(f"[bold]fulfilment callback[/bold] {body.get('type', '')} {what}: "
                      f"signature [{style}]{callback.signature}[/{style}]")


def print_report(console: Console, outcome) -> int:
    """Print the report; the exit status: 0 only when the ledger matches VINR."""
    bad = outcome.bad_days
    console.print(Panel.fit(
        f"Redis: {outcome.redis.description}\n"
        f"Ledger: SQLite in {outcome.folder}\n"
        f"VINR's bad days (seed {bad.seed}): {bad.duplicate_rate:.0%} of webhooks duplicated, "
        f"{bad.drop_rate:.0%} dropped, all reordered up to {bad.reorder_delay:g} s, "
        f"{bad.old_shape_rate:.0%} in the older payload shape, {bad.snake_case_rate:.0%} in snake_case",
        title="vinr-recon demo: Acme GmbH, from the seed guide", title_align="left"))
    if outcome.redis.note:
        console.print(f"[yellow]{outcome.redis.note}[/yellow]")

    story = Table(title="What happened at VINR (through the sandbox's API)", title_justify="left")
    story.add_column("Invoice")
    story.add_column("Number")
    story.add_column("What happened")
    for inv in outcome.story:
        story.add_row(inv.label, outcome.vinr[inv.id].get("number") or "", "; ".join(inv.happened))
    console.print(story)
    console.print(deliveries_line(outcome))
    console.print()
    console.print(invoices_table(outcome))

    run = outcome.run or {}
    counts = run.get("counts") or {}
    found = ", ".join(f"{n} {c.replace('_', ' ')}" for c, n in counts.items() if n) or "no difference left"
    console.print(f"Reconciliation run {run.get('id')}: {run.get('eventsBackfilled', 0)} missed events backfilled "
                  f"from VINR's Events API; then {run.get('invoicesChecked', 0)} invoices compared: {found}, "
                  f"{run.get('correctionsPosted', 0)} corrections posted; "
                  + ("the ledger matches VINR." if run.get("matches") else "the ledger does NOT match VINR."))
    drift = drift_table(outcome)
    if drift is not None:
        console.print(drift)
    else:
        console.print("No drift: every webhook had arrived and been applied before reconciliation.")
    console.print()

    checks = balance_checks(outcome)
    for currency, lines in checks.items():
        console.print(balance_table(outcome, currency))
        for text, ok in lines:
            console.print(_tick(ok), text)
    console.print()
    print_mailbox(console, outcome)
    console.print()

    mismatched = [inv.label for inv in outcome.story if differences(outcome.after.get(inv.id), outcome.vinr[inv.id])]
    balanced = all(ok for lines in checks.values() for _, ok in lines)
    if not mismatched and balanced and run.get("matches"):
        console.print(f"[bold green]✓ The ledger matches VINR[/bold green] ({len(outcome.story)} invoices, "
                      f"{len(checks)} currencies; the demo took {outcome.seconds:.1f} s).")
        return 0
    problems = [f"{len(mismatched)} invoices differ from VINR"] if mismatched else []
    if not balanced:
        problems.append("the trial balance does not agree with VINR")
    if not run.get("matches"):
        problems.append("the reconciliation run did not end in agreement")
    console.print(f"[bold red]✗ The ledger does not match VINR:[/bold red] {'; '.join(problems)}.")
    return 1


def print_failure(console: Console, message: str, children: list[Child]) -> None:
    console.print(f"[bold red]The demo failed:[/bold red] {message}")
    print_logs(console, children)


def print_logs(console: Console, children: list[Child]) -> None:
    """The last lines each part logged (only ever shown when something went wrong)."""
    for child in children:
        tail = child.tail()
        if tail:
            console.rule(f"{child.name} (last lines of {child.log.name})")
            console.print(Text(tail))
