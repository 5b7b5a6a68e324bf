"""The long-context probes: a hit, where the planted fact stood among the passages read, how a probe mode is read."""
from research.long_context import fact_passage, hit, parse_mode


def test_a_hit_reads_numbers_with_separators_as_the_number():
    assert hit("It was given 44,279 dollars.", "44279")
    assert hit("Ottoline BRASK", "Brask")
    assert not hit("44,270 dollars", "44279")


def test_the_fact_passage_is_the_first_passage_that_holds_the_fact():
    passages = ["The lighthouse was built in 1850.", "The keeper of the Velmora lighthouse is Ottoline Brask.",
                "Brask again."]
    assert fact_passage(passages, "Brask") == 2
    assert fact_passage(passages, "Featherstone") is None
    assert fact_passage([], "Brask") is None


def test_a_probe_mode_names_its_reading_its_soft_cap_and_its_raw_budget():
    assert parse_mode("hybrid") == ("hybrid", None, None)
    assert parse_mode("hybrid/0") == ("hybrid", 0, None)
    assert parse_mode("hybrid@128") == ("hybrid", None, 128)
    assert parse_mode("hybrid/256@128") == ("hybrid", 256, 128)
    assert parse_mode("rag@64") == ("rag", None, 64)
