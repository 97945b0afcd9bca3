"""Watches in plain Python, no Dagster: the watches file, and how a watch's new photos are cut into
batches with a cursor that never launches a photo twice (the sensors are tested in test_sensors)."""

import pytest

from facepipe.domain.watching import (
    WatchCursor,
    WatchError,
    WatchesError,
    list_source,
    load_watches,
    load_watches_leniently,
    parse_watches,
    plan_batches,
)
from facepipe.engine.listing import ImageFile

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND


def test_the_watches_file_is_validated_with_errors_that_name_the_field(tmp_path, monkeypatch):
    monkeypatch.delenv("FACEPIPE_WATCHES", raising=False)
    monkeypatch.setenv("FACEPIPE_HOME", str(tmp_path / "home"))
    assert load_watches().watches == []  # no file: no watches

    good = tmp_path / "watches.yaml"
    good.write_text(
        f"watches:\n  - name: inbox\n    source: {tmp_path}\n    group_id: g\nwebhooks:\n  - http://127.0.0.1:1/hook\n"
    )
    monkeypatch.setenv("FACEPIPE_WATCHES", str(good))
    config = load_watches()
    (inbox,) = config.watches
    assert (inbox.max_photos_per_run, inbox.minimum_interval_seconds, inbox.sensor_name) == (500, 30, "watch_inbox")

    bad = [
        ("watches:\n  - {name: a, source: /x, group_id: 'no spaces'}", "watches.0.group_id"),
        ("watches:\n  - {name: a, source: /x, group_id: g, max_photos_per_run: 0}", "watches.0.max_photos_per_run"),
        ("watches:\n  - {name: a, source: /x, group_id: g, colour: red}", "watches.0.colour"),
        (
            "watches:\n  - {name: a, source: /x, group_id: g, profile: nope}",
            "watches.0.profile: Input should be 'dlib'",
        ),
        ("watches:\n  - {name: a, source: /x, group_id: g}\n  - {name: a, source: /y, group_id: h}", "unique"),
        ("webhooks: [ftp://example.com]", "webhooks"),
        ("watches: [", "cannot read"),
    ]
    for text, named in bad:
        good.write_text(text)
        with pytest.raises(WatchesError, match=named) as raised:
            load_watches()
        assert str(good) in str(raised.value)

    monkeypatch.setenv("FACEPIPE_WATCHES", str(tmp_path / "typo.yaml"))
    with pytest.raises(WatchesError, match="no such watches file"):
        load_watches()


def test_photos_of_one_modification_time_are_never_split_between_runs():
    same = [ImageFile(f"/p/{i}.jpg", 1, T0) for i in range(7)] + [ImageFile("/p/later.jpg", 1, T0 + 1)]
    assert [len(b.files) for b in plan_batches(same, WatchCursor(), 5)] == [7, 1]  # 7 > 5, but one window
    launched = WatchCursor().after(plan_batches(same[:7], WatchCursor(), 5), same[:7])
    assert (launched.mtime_ns, len(launched.at_mtime)) == (T0, 7)
    assert [b.files for b in plan_batches(same, launched, 5)] == [[same[-1]]]
    # too many photos at one time to remember: late arrivals at it are left to the nightly re-check,
    # and nothing is launched again
    flood = [ImageFile(f"/f/{i}.jpg", 1, T0) for i in range(10_001)]
    forgetful = WatchCursor().after(plan_batches(flood, WatchCursor(), 500), flood)
    assert forgetful.at_mtime is None and len(forgetful.write("/f")) < 100
    assert WatchCursor.read(forgetful.write("/f"), "/f") == forgetful
    assert WatchCursor.read(forgetful.write("/f"), "/elsewhere") == WatchCursor()  # a new source starts over
    assert plan_batches(flood + [ImageFile("/f/late.jpg", 1, T0)], forgetful, 500) == []


def test_a_flood_is_cut_into_windows_of_at_most_the_batch_size_each_photo_once():
    # 1200 photos, ten per modification time (a burst of uploads)
    files = [ImageFile(f"/in/{i:05d}.jpg", 1, T0 + (i // 10) * SECOND) for i in range(1200)]
    batches = plan_batches(files, WatchCursor(), 500)
    assert [len(b.files) for b in batches] == [500, 500, 200]
    assert sorted(f.path for b in batches for f in b.files) == [f.path for f in files]
    assert [(b.after_ns, b.until_ns) for b in batches][1:] == [
        (batches[0].until_ns, batches[1].until_ns),
        (batches[1].until_ns, batches[2].until_ns),
    ]
    cursor = WatchCursor().after(batches, files)
    assert plan_batches(files, cursor, 500) == []  # nothing launched twice
    assert len({b.run_key("flood") for b in batches}) == 3


def test_a_source_that_cannot_be_listed_is_one_clear_error(tmp_path):
    gone = parse_watches({"watches": [{"name": "gone", "source": str(tmp_path / "nowhere"), "group_id": "g"}]})
    with pytest.raises(WatchError, match="watch gone: cannot list"):
        list_source(gone.watches[0])


def test_a_bad_watch_is_left_out_with_its_problem_and_the_others_still_run(tmp_path):
    watches = tmp_path / "watches.yaml"
    watches.write_text(
        f"watches:\n  - {{name: good, source: {tmp_path}, group_id: g}}\n"
        f"  - {{name: typo, source: {tmp_path}, group_id: 'no spaces'}}\n"
        f"  - {{name: good, source: {tmp_path}, group_id: h}}\n"
        "webhooks: [ftp://example.com]\n"
    )
    config, problems = load_watches_leniently(watches)
    assert [w.name for w in config.watches] == ["good"] and config.webhooks == []
    assert "group_id 'no spaces'" in problems["watch_typo"] and str(watches) in problems["watch_typo"]
    assert "more than once" in problems["watch_2"]
    assert "webhooks" in problems["watches_file"]

    watches.write_text("watches: [")
    config, problems = load_watches_leniently(watches)
    assert config.watches == [] and "cannot read the watches file" in problems["watches_file"]
