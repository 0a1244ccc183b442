#!/usr/bin/env python3
"""Differential test: p1gw's parser against Python's dsmr_parser, line by line.

    scripts/differential            (sets up the venv and runs this)
    python3 scripts/differential.py OURS.jsonl FILE...

OURS.jsonl holds our JSON of every FILE (one telegram each, read in Europe/Amsterdam as dsmr_parser
reads every timestamp), from `cargo run -p p1-telegram --example jsonl -- --tz Europe/Amsterdam`.
For each data line, every dsmr_parser object of the telegram's specification that matches the
line is parsed by dsmr_parser's own value parser and compared with our object for that line:
numbers (exactly, as decimals), units, timestamps (as instants), texts (as sent), the M-Bus
capture time, the power-failure log and Belgium's peak history. dsmr_parser has no object for a
code it does not know; those lines are not compared.

Every disagreement is either fixed in p1gw or listed in KNOWN below with the reason it is
dsmr_parser's and not ours. The test fails on a disagreement not listed, and on a listed one that
no longer occurs (so the list stays true). Exit 0 = agreement everywhere else.
"""
import copy
import json
import os
import re
import sys
from datetime import datetime, timezone
from decimal import Decimal

from dsmr_parser import telegram_specifications as specs
from dsmr_parser.exceptions import ParseError
from dsmr_parser.objects import CosemObject, MBusObject, MBusObjectPeak, ProfileGenericObject
from dsmr_parser.value_types import timestamp

# (fixture, OBIS code as we print it, field) -> why dsmr_parser's answer is not ours.
PLACEHOLDER_TIME = ("an unset meter clock: a year-2000 or 1 January '70 stamp is \"no time\" for us "
                    "(docs/telegram-values.md); dsmr_parser reads it as a date")
EMPTY_SLOT = ("an empty slot: a placeholder stamp with a zero (or 2^31 - 1 s and more) is no value for "
              "us; dsmr_parser reports the zero")
IMPOSSIBLE_TIME = "an impossible date (632525252525, month 31 or 25): both say no time, dsmr_parser by dropping the line"
KNOWN = {
    # Kaifa's failure log: every entry ended during an unset clock (year 2000).
    ("netherlands_kaifa_dsmr42", "1-0:99.97.0", "events[0].end"): PLACEHOLDER_TIME,
    ("netherlands_kaifa_dsmr42", "1-0:99.97.0", "events[1].end"): PLACEHOLDER_TIME,
    ("netherlands_kaifa_dsmr42", "1-0:99.97.0", "events[2].end"): PLACEHOLDER_TIME,
    ("netherlands_kaifa_dsmr42", "1-0:99.97.0", "events[1].duration"): EMPTY_SLOT,
    ("netherlands_kaifa_dsmr42", "1-0:99.97.0", "events[2].duration"): EMPTY_SLOT,
    # The empty gas channel of an Iskra AM550: `(700101010000W)(00000000)`.
    ("netherlands_iskra_am550_dsmr50_gas_on_mbus2", "0-1:24.2.1", "time"): PLACEHOLDER_TIME,
    ("netherlands_iskra_am550_dsmr50_gas_on_mbus2", "0-1:24.2.1", "value"): EMPTY_SLOT,
    # MCS's all-zero test meter: `0-1:24.2.1(000101000000W)(00000000.0000)` and a log of
    # `000000000000` ends.
    ("netherlands_mcs_dsmr50_empty_mbus", "0-1:24.2.1", "time"): PLACEHOLDER_TIME,
    ("netherlands_mcs_dsmr50_empty_mbus", "0-1:24.2.1", "value"): EMPTY_SLOT,
    ("netherlands_mcs_dsmr50_empty_mbus", "1-0:99.97.0", "events[1].duration"): EMPTY_SLOT,
    # Luxembourg's empty water channels `(632525252525S)(00000.000)`, and a Belgian month whose
    # peak time is `632525252525W` with `(00.000*kW)`.
    ("luxembourg_smarty_spec_gas_water", "0-2:24.2.1", "value"): EMPTY_SLOT,
    ("luxembourg_smarty_spec_gas_water", "0-3:24.2.1", "value"): EMPTY_SLOT,
    ("belgium_fluvius_emucs_gas_water_alt", "0-0:98.1.0", "events[0].value"): EMPTY_SLOT,
    # An unset message buffer of 1 024 bytes 0xFF.
    ("hungary_aux_sanxing_billing_snapshot", "0-0:96.13.0", "parse"):
        "dsmr_parser drops the line (its text pattern refuses the 0xFF bytes) and logs an error "
        "each telegram; for us it is an unset buffer, empty (docs/telegram-values.md)",
    # The text message code is hex-encoded text like the message itself (`3031203631203831` is
    # "01 61 81"); dsmr_parser reads the hex digits as one decimal number.
    ("dsmr30_spec_example", "0-0:96.13.1", "value"): "dsmr_parser reads hex-encoded text as a number",
    ("dsmr404_spec_example", "0-0:96.13.1", "value"): "dsmr_parser reads hex-encoded text as a number",
    ("dsmr422_spec_example", "0-0:96.13.1", "value"): "dsmr_parser reads hex-encoded text as a number",
    # Veitur's capture `1-0:1.7.0(00.588*kW)* ()`: junk after the group.
    ("iceland_veitur_iskra_ie5e_heat_submeter_raw", "1-0:1.7.0", "parse"):
        "dsmr_parser drops a line with bytes after its group; we keep the value and the junk "
        "stays in raw",
}


def spec_for(name, text):
    """The dsmr_parser specification a user of that library would pick for this meter."""
    header = text[text.index("/") + 1:].split("\r\n", 1)[0]
    maker = header[:3].upper()
    if maker == "FLU" or "0-0:96.1.4(" in text:
        return specs.BELGIUM_FLUVIUS
    if maker == "LUX":
        return specs.LUXEMBOURG_SMARTY
    if maker in ("ADN", "AID", "ELL", "KAM"):
        return specs.SWEDEN
    if maker == "ESY":
        return specs.Q3D
    if maker == "EST":
        return specs.SAGEMCOM_T210_D_R
    if maker in ("AUX", "SAG"):
        return specs.EON_HUNGARY
    if maker == "ISK" and "IE5" in header.upper():
        return specs.ISKRA_IE
    version = re.search(r"1-3:0\.2\.8\((\d+)\)", text)
    if version:
        return specs.V5 if int(version.group(1)) >= 50 else specs.V4
    return specs.V3 if "24.3.0" in text and "DSMR" not in name else specs.V2_2


def data_lines(text):
    """The data lines after the header, each with its CR LF; a DSMR 3 `(value)` line is
    joined to the line before it, as both parsers join it."""
    body = text[text.index("/"):]
    lines = body.split("\r\n")
    out = []
    for line in lines[1:]:
        if line.startswith("!"):
            break
        if not line.strip():
            continue
        if line.startswith("(") and out:
            out[-1] += line + "\r\n"
            continue
        out.append(line + "\r\n")
    return out


def instant(value):
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def number(value):
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return str(value)


def compare(name, code, ours, theirs, found):
    def differ(field, mine, other):
        found.append((name, code, field, mine, other))

    def check_value(field, mine, other):
        if isinstance(other, str) and other:
            # An entry dsmr_parser left untyped (a power-failure log whose capture code it does
            # not know): read with its own timestamp parser, or as a decimal.
            other = timestamp(other) or number(other)
        if isinstance(other, datetime) or (other is None and isinstance(mine, str)):
            if instant(mine) != instant(other):
                differ(field, mine, other)
        elif isinstance(other, str):
            differ(field, mine, other)
        elif number(mine) != number(other):
            differ(field, mine, other)

    raw_groups = re.findall(r"\(([^()]*)\)", ours.get("raw", ""))
    if isinstance(theirs, list):  # Belgium's 13-month peak history (MaxDemandParser)
        events = ours.get("events", [])
        if len(events) != len(theirs):
            differ("events", len(events), len(theirs))
            return
        for i, (event, peak) in enumerate(zip(events, theirs)):
            check_value(f"events[{i}].month", event.get("month"), peak.datetime)
            check_value(f"events[{i}].time", event.get("time"), peak.occurred)
            check_value(f"events[{i}].value", event.get("value"), peak.value)
        return
    if isinstance(theirs, ProfileGenericObject):  # the power-failure log
        if number(ours.get("value")) != number(theirs.buffer_length):
            differ("value", ours.get("value"), theirs.buffer_length)
        events = ours.get("events", [])
        if len(events) != len(theirs.buffer):
            differ("events", len(events), len(theirs.buffer))
            return
        for i, (event, entry) in enumerate(zip(events, theirs.buffer)):
            check_value(f"events[{i}].end", event.get("end"), entry.datetime)
            check_value(f"events[{i}].duration", event.get("duration"), entry.value)
        return
    if isinstance(theirs, (MBusObject, MBusObjectPeak)):
        check_value("time", ours.get("time"), theirs.datetime)
        check_value("value", ours.get("value"), theirs.value)
        if theirs.unit != ours.get("unit"):
            differ("unit", ours.get("unit"), theirs.unit)
        return
    if isinstance(theirs, CosemObject):
        value = theirs.value
        if isinstance(value, str):
            # Text as sent: compare with our raw group (we also decode hex text).
            sent = raw_groups[0] if raw_groups else ""
            if sent != value and not (value == "" and ours.get("raw") == "()"):
                differ("text", ours.get("raw"), value)
        elif value is None and not raw_groups:
            pass
        else:
            mine = ours.get("value")
            if isinstance(value, int) and not isinstance(value, bool):
                value = Decimal(value)
            check_value("value", mine, value)
            if theirs.unit is not None and theirs.unit != ours.get("unit"):
                differ("unit", ours.get("unit"), theirs.unit)
        return
    differ("type", type(ours).__name__, type(theirs).__name__)


def short(value):
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def main():
    ours_path, files = sys.argv[1], sys.argv[2:]
    ours = {}
    with open(ours_path, encoding="utf-8") as handle:
        for line in handle:
            t = json.loads(line, parse_float=Decimal)
            ours[t["source"]] = t
    found = []
    compared = 0
    for path in files:
        name = os.path.splitext(os.path.basename(path))[0]
        text = open(path, "rb").read().decode("latin-1")
        if "/" not in text:
            continue
        mine = ours.get(path)
        if mine is None:
            print(f"{name}: no telegram of ours")
            found.append((name, "-", "telegram", None, "dsmr_parser parses it"))
            continue
        # A fresh copy per telegram: dsmr_parser's power-failure log parser keeps the value
        # parsers of the first log it saw (ProfileGenericParser.value_formats grows per call).
        spec = copy.deepcopy(spec_for(name, text))
        patterns = [(re.compile(o["obis_reference"], re.DOTALL | re.MULTILINE), o) for o in spec["objects"]]
        lines = data_lines(text)
        objects = mine["objects"]
        if len(lines) != len(objects):
            found.append((name, "-", "lines", len(objects), len(lines)))
            continue
        for line, obj in zip(lines, objects):
            for pattern, entry in patterns:
                match = pattern.match(line)
                if not match:
                    continue
                try:
                    theirs = entry["value_parser"].parse(match.group(0))
                except (ParseError, ValueError, IndexError, TypeError) as error:
                    found.append((name, obj["obis"], "parse", "parsed", f"dsmr_parser: {error}"))
                    continue
                compared += 1
                compare(name, obj["obis"], obj, theirs, found)
    unknown = [f for f in found if f[:3] not in KNOWN]
    seen = {f[:3] for f in found}
    stale = [k for k in KNOWN if k not in seen]
    for f in found:
        status = "known" if f[:3] in KNOWN else "NEW"
        print(f"{status}: {f[0]} {f[1]} {f[2]}: ours {short(f[3])}, dsmr_parser {short(f[4])}")
        if f[:3] in KNOWN:
            print(f"       because: {KNOWN[f[:3]]}")
    for k in stale:
        print(f"STALE: {k} is listed but agrees now: remove it from KNOWN")
    print(f"{len(files)} telegrams, {compared} values compared, "
          f"{len(found) - len(unknown)} known disagreements, {len(unknown)} new, {len(stale)} stale")
    return 1 if unknown or stale else 0


if __name__ == "__main__":
    sys.exit(main())
