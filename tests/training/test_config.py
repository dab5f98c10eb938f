"""Run configs are validated whole: misspelled keys are errors naming the valid ones."""

from pathlib import Path

import pytest

from transformer.model.config import ConfigError, ModelConfig
from transformer.training.config import RunConfig, TrainSettings, build_model, check_out_dir, load_run_config

CONFIGS = Path(__file__).parent.parent.parent / "configs"


@pytest.mark.parametrize(
    "name",
    ["tiny-routed", "tiny-sequence-routed", "tiny-token-routed", "tiny-plain", "shakespeare-char", "gpt2-small-routed"],
)
def test_every_shipped_config_loads_and_builds_a_valid_model_config(name: str) -> None:
    config = load_run_config(CONFIGS / f"{name}.yaml")
    assert isinstance(config.model, ModelConfig) and config.model.d_vocab is None
    model = config.with_vocab(100).model
    assert model.d_vocab == 100
    assert (config.routing is None) == (name in ("tiny-plain", "shakespeare-char"))
    if config.routing is not None:
        config.routing.check_fits(model)


def test_the_default_config_is_the_tiny_routed_model() -> None:
    config = load_run_config(None)
    assert config == load_run_config(CONFIGS / "tiny-routed.yaml")
    # the routed variant that beat plain-K at equal training FLOPs in docs/results.md: token-all
    assert config.routing is not None
    routing = config.routing
    assert (routing.granularity, routing.token_attention, routing.capacity_factor) == ("token", "all", None)


def test_overrides_change_values_with_yaml_types() -> None:
    config = load_run_config(
        None, ["train.max_steps=7", "model.d_model=32", "train.lr=1e-2", "routing.gradient=none", "train.compile=true"]
    )
    assert config.train.max_steps == 7 and config.train.lr == 0.01 and config.train.compile is True
    assert config.model.d_model == 32 and config.routing is not None and config.routing.gradient == "none"
    assert load_run_config(None, ["routing=null"]).routing is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.max_stepz=7"], r"unknown train setting\(s\) \['max_stepz'\].*valid train settings are"),
        (["model.d_modle=32"], r"unknown ModelConfig field\(s\) \['d_modle'\]"),
        (["routing.pool=3"], r"unknown RoutingConfig field\(s\) \['pool'\]"),
        (["optim.lr=3"], r"expected SECTION.KEY=VALUE"),
        (["train.max_steps"], r"expected SECTION.KEY=VALUE"),
        (["train.batch_size=0"], r"train.batch_size=0 must be a positive integer"),
        (["model.d_model=30"], r"d_model=30 is not divisible by n_heads=4"),
        (["train.tokenizer=bpe"], r"needs train.vocab_size"),
        (["train.device=tpu"], r"train.device='tpu'"),
        (["train.lr=0.1", "train.min_lr=0.2"], r"min_lr <= lr"),
    ],
)
def test_bad_values_and_unknown_keys_are_errors_that_say_what_to_do(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, overrides)


def test_unknown_sections_and_bad_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config section\(s\) \['trian'\]"):
        RunConfig.from_dict({"model": {}, "trian": {}})
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(broken)


def test_d_vocab_comes_from_the_tokenizer_unless_given_and_never_smaller() -> None:
    config = RunConfig(model=ModelConfig(d_model=32, n_heads=4), routing=None, train=TrainSettings())
    filled = config.with_vocab(77)
    assert filled.model == ModelConfig(d_vocab=77, d_model=32, n_heads=4) and filled.train == config.train
    assert config.model.d_vocab is None  # with_vocab returns a new config
    padded = RunConfig(model=ModelConfig(d_model=32, n_heads=4, d_vocab=128), routing=None)
    assert padded.with_vocab(77).model.d_vocab == 128
    assert padded.with_vocab(128).model.d_vocab == 128
    small = RunConfig(model=ModelConfig(d_model=32, n_heads=4, d_vocab=50), routing=None)
    with pytest.raises(ConfigError) as caught:
        small.with_vocab(77)
    assert str(caught.value) == (
        "model.d_vocab=50 is smaller than the tokenizer's vocabulary (77): "
        "leave d_vocab out to use the tokenizer's size"
    )
    assert load_run_config(None, ["model.d_vocab=300"]).with_vocab(65).model.d_vocab == 300


def test_build_model_needs_the_filled_config() -> None:
    config = load_run_config(None, ["routing=null", "model.n_layers=1"])
    with pytest.raises(ConfigError, match=r"^model.d_vocab is not set"):
        build_model(config)
    assert build_model(config.with_vocab(40)).embed.W_E.shape == (40, config.model.d_model)


def test_overrides_apply_before_sizes_are_derived() -> None:
    """--set model.d_model changes the derived d_head and d_mlp too, as it would in the file;
    sizes the file gives stay given."""
    config = load_run_config(None, ["model.d_model=256"])
    assert (config.model.d_head, config.model.d_mlp) == (256 // config.model.n_heads, 4 * 256)
    given = load_run_config(None, ["model.d_head=8", "model.d_model=256"])
    assert given.model.d_head == 8


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("model.attention=readable", "model.attention was renamed model.kernels: write kernels: readable"),
        ("model.rotate_dim=8", "model.rotate_dim was renamed model.rotary_dim: write rotary_dim: 8"),
    ],
)
def test_old_keys_from_set_or_a_file_name_their_new_names(tmp_path: Path, assignment: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_run_config(None, ["model.positional=rotary", assignment])
    assert str(caught.value) == message
    key, value = assignment.removeprefix("model.").split("=")
    old_file = tmp_path / "old.yaml"
    old_file.write_text(f"model:\n  positional: rotary\n  {key}: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_run_config(old_file)
    assert str(caught.value) == message


def test_round_trip_through_a_plain_dict() -> None:
    config = load_run_config(None, ["train.max_steps=9"])
    assert RunConfig.from_dict(config.to_dict()) == config
    filled = config.with_vocab(65)
    assert filled.to_dict()["model"]["d_vocab"] == 65 and RunConfig.from_dict(filled.to_dict()) == filled


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        # before: attn_only='abc' is truthy, so an attention-only model was built
        ("model.attn_only=abc", "model.attn_only='abc' (a string) must be true or false"),
        # before: True == 1, so training ran at lr 1.0
        ("train.lr=true", "train.lr=True (a bool) must be a finite number"),
        ("train.data=5", "train.data=5 (an integer) must be a string"),
        ("train.out_dir=[a, b]", "train.out_dir=['a', 'b'] (a list) must be a string"),
        ("model.d_model=64.0", "model.d_model=64.0 (a number) must be an integer"),
        ("model.d_head=yes", "model.d_head=True (a bool) must be an integer"),
        ("routing.skip=1", "routing.skip=1 (an integer) must be true or false"),
        ("routing.capacity_factor=abc", "routing.capacity_factor='abc' (a string) must be a finite number or null"),
        ("train.vocab_size=4096.5", "train.vocab_size=4096.5 (a number) must be an integer or null"),
        ("train.weight_decay=.nan", "train.weight_decay=nan (a number) must be a finite number"),  # nan passed `< 0`
        ("train.grad_clip=.inf", "train.grad_clip=inf (a number) must be a finite number"),
        ("train.seed=99999999999999999999", "train.seed=99999999999999999999 is too large"),
        ("train.compile={a: 1}", "train.compile={'a': 1} (a dict) must be true or false"),
    ],
)
def test_a_value_of_the_wrong_type_is_an_error_naming_the_key(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_run_config(None, [assignment])
    assert str(caught.value).startswith(message)


def test_typed_fields_hold_their_declared_types_whichever_way_they_enter() -> None:
    """An int for a float field becomes a float, from YAML and from Python alike; quoted
    text stays text."""
    config = load_run_config(None, ["train.lr=1", "routing.capacity_factor=2", "train.data='5'"])
    assert type(config.train.lr) is float and config.train.lr == 1.0
    assert config.routing is not None and type(config.routing.capacity_factor) is float
    assert config.train.data == "5"
    assert type(TrainSettings(min_lr=0).min_lr) is float


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("model: [1, 2]\n", [], "config section 'model' must be a mapping of KEY: VALUE, not [1, 2]"),
        ("train: 0\n", [], "config section 'train' must be a mapping of KEY: VALUE, not 0"),  # was read as {}
        ("routing: true\n", [], "config section 'routing' must be a mapping of KEY: VALUE, not True"),
        ("model: {}\n", ["routing=5"], "config section 'routing' must be a mapping of KEY: VALUE, not 5"),
        ("model: [1]\n", ["model.d_model=8"], "--set 'model.d_model=8': config section 'model' is [1], not a mapping"),
        ("model: {1: 2}\n", [], "config section 'model' has keys that are not names: [1]"),
        ("[1, 2]\n", [], "must hold a mapping with sections"),
        ("7: {}\n", [], "a run config has keys that are not names: [7]"),
    ],
)
def test_every_section_must_be_a_mapping_of_names(
    tmp_path: Path, text: str, overrides: list[str], message: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_run_config(path, overrides)
    assert message in str(caught.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "{}\n", "---\n"])
def test_an_empty_config_file_is_an_error_not_a_run_of_every_default(tmp_path: Path, text: str) -> None:
    """Before, an empty file trained ModelConfig's defaults as a plain decoder, which is neither
    the documented default run (tiny-routed.yaml) nor anything the file asked for."""
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"is empty: .* leave --config out for the default run"):
        load_run_config(path)


def test_unreadable_files_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("train: {data: café}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 17 is 0xe9\): save it as UTF-8"):
        load_run_config(latin)
    with pytest.raises(ConfigError, match="is a folder: give a YAML file"):
        load_run_config(tmp_path)
    duplicate = tmp_path / "twice.yaml"
    duplicate.write_text("train:\n  lr: 0.1\n  lr: 0.2\n")  # PyYAML alone keeps the last, silently
    with pytest.raises(ConfigError, match="key 'lr' is given twice in one mapping"):
        load_run_config(duplicate)
    locked = tmp_path / "locked.yaml"
    locked.write_text("train: {}\n")

    def refuse(_: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(ConfigError, match="cannot be read: Permission denied"):
        load_run_config(locked)


def test_a_set_value_that_is_not_yaml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^--set 'train.lr=\[': the value is not valid YAML"):
        load_run_config(None, ["train.lr=["])


def test_an_out_dir_that_names_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("")
    check_out_dir(TrainSettings(out_dir=str(tmp_path / "run")))  # a folder to be made: fine
    for out_dir in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "run"):
        with pytest.raises(ConfigError, match=r"notes.txt is a file, not a folder"):
            check_out_dir(TrainSettings(out_dir=str(out_dir)))


def test_a_model_too_large_for_the_machine_is_a_config_error_not_a_traceback() -> None:
    # Well typed, but W_E alone would be 10**7 x 10**7 floats (400 TB): the allocation fails at once.
    config = RunConfig(model=ModelConfig(d_model=10**7, n_heads=1, d_vocab=10**7), routing=None)
    with pytest.raises(ConfigError, match="does not fit in this machine's memory"):
        build_model(config)
