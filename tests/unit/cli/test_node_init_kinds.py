"""``fedscreen node init --kind`` and what ``node status`` says of the kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedscreen.cli.main import main
from fedscreen.node.home import load_config


def test_init_a_university_and_its_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "u"
    assert main(["node", "init", "--home", str(home), "--node-id", "10075", "--name",
                 "河北大学", "--kind", "university", "--county", "130602"]) == 0  # fmt: skip
    assert "created university node 10075" in capsys.readouterr().out
    config = load_config(home)
    assert (config.kind, config.county_code, config.school_id) == ("university", "130602", "10075")
    assert main(["node", "status", "--home", str(home)]) == 0
    assert (
        "university node 10075 (河北大学), county 130602, school 10075" in capsys.readouterr().out
    )


def test_init_defaults_to_a_county(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "c"
    assert (
        main(["node", "init", "--home", str(home), "--node-id", "130102", "--name", "长安区"]) == 0
    )
    assert load_config(home).kind == "county"
    capsys.readouterr()
    assert main(["node", "status", "--home", str(home)]) == 0
    assert "county node 130102 (长安区), county 130102, data version" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--kind", "school"], "a school node needs --county"),
        (["--kind", "university"], "a university node needs --county"),
        (["--school", "1301020001", "--county", "130102"], "--school is for a school or"),
    ],
)
def test_init_refuses_a_kind_without_what_it_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    argv = ["node", "init", "--home", str(tmp_path / "n"), "--node-id", "130102-s01",
            "--name", "n", *extra]  # fmt: skip
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "n").exists()


def test_init_refuses_an_unknown_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["node", "init", "--home", str(tmp_path / "n"), "--node-id", "x1", "--name", "n",
              "--kind", "village"])  # fmt: skip
    assert "invalid choice: 'village'" in capsys.readouterr().err
