"""Property tests (hypothesis) of record validation and of the fold.

Validation: generated valid records pass and survive a JSON round trip; one broken field is
always refused with the right reason; any JSON-ish value is accepted or refused, never a crash.
The fold: a shuffled stream with re-deliveries and junk folds like the clean stream once, and the
cardinality cap holds (and is counted) whatever the input.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aotwatch.core.aggregate import Aggregate
from aotwatch.core.records import (
    GRAPH_KINDS,
    MAX_ID,
    MAX_LABEL,
    MAX_NUMBER,
    MAX_TEXT,
    MAX_TIME,
    REQUIRED_FIELDS,
    SCHEMA_VERSION,
    RecordError,
    as_dict,
    decode_line,
    decode_lines,
    empty_record,
    encode_record,
    to_record,
)
from aotwatch.report.summary import prometheus
from strategies import (
    FIELDS,
    label_text,
    shown_text,
    unprintable,
    valid_records,
)

ACCEPTED_TYPES = {
    "schema": (int,),
    "record_id": (str,),
    "job_name": (str,),
    "rank": (int,),
    "world_size": (int,),
    "device": (str,),
    "hostname": (str,),
    "pid": (int,),
    "time": (int, float),
}
"""The required fields and the JSON types each takes, written down apart from the schema."""
REASONS = {
    "not_an_object",
    "schema_version",
    "missing_field",
    "unknown_field",
    "wrong_type",
    "too_large",
}

QUICK = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_strategy_covers_every_field_of_the_schema():
    assert set(FIELDS) == set(empty_record())
    assert set(REQUIRED_FIELDS) == set(ACCEPTED_TYPES)


@QUICK
@given(valid_records)
def test_valid_records_validate_and_round_trip(record):
    assert as_dict(to_record(record)) == record
    assert as_dict(decode_line(encode_record(record))) == record
    assert to_record(json.loads(encode_record(record))) == to_record(record)


# -- one broken field -----------------------------------------------------------------------

ANY_VALUE = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=5)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers())
)


def wrong_type(key: str) -> st.SearchStrategy[object]:
    return ANY_VALUE.filter(lambda value: type(value) not in ACCEPTED_TYPES[key])


def too_long(low: int, alphabet: str = "x") -> st.SearchStrategy[str]:
    return st.integers(low + 1, low + 64).map(lambda n: alphabet * n)


bad_number = st.sampled_from([-0.5, math.nan, -math.inf]) | st.integers(-MAX_NUMBER, -1)
"""Numbers a count or a time may not be (+inf is too large: beyond MAX_NUMBER)."""
huge_count = st.integers(MAX_NUMBER + 1, 2**4000)
huge_int = huge_count.flatmap(lambda n: st.sampled_from([n, -n]))
COUNTED = ("inputs", "mutation_placement", "outputs", "tokens", "durations_s")


@st.composite
def broken_records(draw) -> tuple[dict, str]:
    """A valid record with one thing broken, and the reason it must be refused for."""
    record = draw(valid_records)
    required = sorted(set(REQUIRED_FIELDS) - {"schema"})
    kind = draw(
        st.sampled_from(
            [
                "missing",
                "wrong_type",
                "schema",
                "time",
                "late",
                "unprintable",
                "count",
                "huge_count",
                "huge_int",
                "label",
                "id",
                "text",
                "graph",
                "break_text",
                "negative_count",
            ]
        )
    )
    if kind == "missing":
        del record[draw(st.sampled_from(required))]
        return record, "missing_field"
    if kind == "wrong_type":
        key = draw(st.sampled_from(required))
        record[key] = draw(wrong_type(key))
        return record, "wrong_type"
    if kind == "schema":
        record["schema"] = draw(
            st.integers().filter(lambda v: v != SCHEMA_VERSION) | st.text() | st.none()
        )
        return record, "schema_version"
    if kind == "time":
        record["time"] = draw(bad_number)
        return record, "wrong_type"
    if kind == "late":  # after the calendar's end: no date to show it at
        late = st.floats(MAX_TIME, MAX_NUMBER, exclude_min=True) | st.integers(MAX_TIME + 1)
        if draw(st.booleans()):
            record["time"] = draw(late)
        else:
            record["durations_s"] = {**record["durations_s"], "total": draw(late)}
        return record, "too_large"
    if kind == "unprintable":  # an escape sequence for the terminal that prints it
        text = "0/0" + draw(unprintable) + draw(shown_text)
        where = draw(st.sampled_from(["compile_id", "graph_hash", "collective_hash", "cache"]))
        if where == "cache":
            results = {text: 1} if draw(st.booleans()) else {}
            record["cache"] = {**record["cache"], ("fx_graph" if results else text): results}
        else:
            record[where] = text
        if draw(st.booleans()):
            record["collectives"] = [*record["collectives"], text]
        return record, "wrong_type"
    if kind in ("count", "huge_count"):
        key = draw(st.sampled_from(COUNTED))
        huge = huge_count
        if key == "durations_s":
            huge = huge | st.floats(MAX_NUMBER * 2, 1e308) | st.just(math.inf)
        record[key] = {**record[key], "x": draw(bad_number if kind == "count" else huge)}
        return record, "wrong_type" if kind == "count" else "too_large"
    if kind == "huge_int":
        key = draw(st.sampled_from(["rank", "world_size", "pid", "nodes", "intermediate_bases"]))
        signed = key in ("rank", "world_size", "pid")
        record[key] = draw(huge_int if signed else huge_count)
        return record, "too_large"
    if kind == "negative_count":
        record[draw(st.sampled_from(["nodes", "intermediate_bases"]))] = draw(bad_number)
        return record, "wrong_type"
    if kind == "label":
        record[draw(st.sampled_from(["job_name", "device"]))] = draw(too_long(MAX_LABEL))
        return record, "too_large"
    if kind == "id":
        record[draw(st.sampled_from(["record_id", "compile_id", "graph_hash"]))] = draw(
            too_long(MAX_ID, "f")
        )
        return record, "too_large"
    if kind == "text":
        key = draw(st.sampled_from(["hostname", "recompile_reason", "fail_type"]))
        record[key] = draw(too_long(MAX_TEXT))
        return record, "too_large"
    if kind == "graph":
        record["graph"] = draw(st.text().filter(lambda g: g not in GRAPH_KINDS))
        return record, "wrong_type"
    entry = {"reason": draw(too_long(MAX_TEXT)), "category": "other", "user_frame": None}
    record["graph_breaks"] = [*record["graph_breaks"], entry]
    return record, "too_large"


@QUICK
@given(broken_records())
def test_one_broken_field_is_refused_with_its_reason(broken):
    record, reason = broken
    try:
        to_record(record)
    except RecordError as err:
        assert err.reason == reason, err
    else:
        raise AssertionError(f"accepted a record that should fail with {reason}")
    aggregate = Aggregate()
    assert aggregate.add(record) is False
    values = aggregate.snapshot().values
    assert values.pop("aotwatch_jobs") == {("running",): 0, ("finished",): 0}  # no job begun
    assert values == {"aotwatch_records_rejected": {(reason,): 1}}


# -- anything at all ------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
valid_with_overrides = st.builds(
    lambda record, overrides: {**record, **overrides},
    valid_records,
    st.dictionaries(st.sampled_from(sorted(FIELDS)), json_values, max_size=4),
)


@QUICK
@given(json_values | valid_with_overrides)
def test_anything_is_accepted_or_refused_never_a_crash(obj):
    try:
        accepted, reason = to_record(obj) is not None, None
    except RecordError as err:
        accepted, reason = False, err.reason
    assert reason is None or reason in REASONS
    aggregate = Aggregate()
    assert aggregate.add(obj) is accepted
    prometheus(aggregate.snapshot())  # what the collector serves renders whatever came in
    if not accepted:
        assert aggregate.snapshot().values["aotwatch_records_rejected"] == {(reason,): 1}


# -- the fold -------------------------------------------------------------------------------

unique_streams = st.lists(valid_records, max_size=12, unique_by=lambda r: r["record_id"])


def fold(stream, **options) -> Aggregate:
    aggregate = Aggregate(**options)
    for record in stream:
        aggregate.add(record)
    return aggregate


@QUICK
@given(unique_streams, st.data())
def test_a_shuffled_redelivered_stream_with_junk_folds_like_the_clean_one(stream, data):
    resent = data.draw(st.lists(st.sampled_from(stream), max_size=12) if stream else st.just([]))
    junk = data.draw(st.lists(broken_records(), max_size=4))
    dirty = data.draw(
        st.permutations(
            [*stream, *(dict(record) for record in resent), *(record for record, _ in junk)]
        )
    )
    clean, folded = fold(stream).snapshot(), fold(dirty).snapshot()
    rejected = folded.values.pop("aotwatch_records_rejected", {})
    assert folded == clean
    expected: dict[tuple[str], int] = {}
    for _, reason in junk:
        expected[(reason,)] = expected.get((reason,), 0) + 1
    assert rejected == expected


@QUICK
@given(
    st.integers(1, 4),
    st.lists(
        st.tuples(valid_records, label_text), max_size=14, unique_by=lambda p: p[0]["record_id"]
    ),
)
def test_the_cardinality_cap_holds_and_counts_what_it_refuses(cap, pairs):
    stream = [{**record, "job_name": job} for record, job in pairs]
    aggregate = fold(stream, max_series_per_metric=cap)
    snapshot = aggregate.snapshot()
    dropped = snapshot.values.get("aotwatch_series_dropped", {})
    for family, table in [*snapshot.values.items(), *snapshot.histograms.items()]:
        if family not in ("aotwatch_series_dropped", "aotwatch_jobs"):  # those are bounded
            assert len(table) <= cap, family
            assert not dropped.get((family,)) or len(table) == cap, family  # drops only when full
    jobs = list(dict.fromkeys(record["job_name"] for record in stream))
    received = snapshot.values.get("aotwatch_records_received", {})
    assert list(received) == [(job,) for job in jobs[:cap]]  # running jobs keep their series
    assert sum(received.values()) == sum((r["job_name"],) in received for r in stream)
    refused = dropped.get(("aotwatch_records_received",), 0)
    assert refused == max(0, len(jobs) - cap)  # each refused label set counted once
    assert len(aggregate._jobs) <= cap  # the jobs tracked are capped like a family


@QUICK
@given(st.lists(valid_records, max_size=6), st.lists(broken_records(), max_size=3), st.data())
def test_a_batch_of_lines_decodes_as_its_lines_do_one_by_one(good, broken, data):
    lines = [encode_record(record) for record in good]
    lines += [json.dumps(record, default=str).encode() + b"\n" for record, _ in broken]
    lines = data.draw(st.permutations(lines))
    batch = b"".join(lines).replace(b"\n", b"\n \n", 1)  # and a blank line
    decoded = decode_lines(batch)
    one_by_one = []
    for line in lines:
        try:
            one_by_one.append((decode_line(line), line))
        except RecordError as err:
            one_by_one.append(err)
    assert len(decoded) == len(one_by_one)
    for got, expected in zip(decoded, one_by_one, strict=True):
        if isinstance(expected, RecordError):
            assert isinstance(got, RecordError) and got.reason == expected.reason
        else:
            assert got == expected
