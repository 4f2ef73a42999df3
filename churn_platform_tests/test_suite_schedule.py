"""`make test`'s workers take the longest test groups first, and those groups exist."""

from pathlib import Path

from churn_platform_tests.conftest import LONGEST_GROUPS, longest_first

TESTS = Path(__file__).parent


def test_every_listed_group_is_the_pipeline_or_a_test_file() -> None:
    # A renamed file would silently drop to the back of the queue.
    for name in LONGEST_GROUPS:
        assert name == "pipeline" or (TESTS / f"{name}.py").is_file(), name


def test_listed_groups_go_first_then_the_ones_with_most_tests() -> None:
    collected = ["test_a", "test_b", "test_b", "test_daemon", "pipeline", "test_c", "pipeline"]
    collected += ["test_b", "test_c", "test_d"]
    expected = ["pipeline", "test_daemon", "test_b", "test_c", "test_a", "test_d"]
    assert longest_first(collected) == expected
