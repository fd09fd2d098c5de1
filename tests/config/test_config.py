import pytest

from igpo.config import ConfigError, load_config


def test_defaults_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("rollout:\n  group_size: 8\nalgorithm:\n  estimator: grpo\n")
    cfg = load_config(p, ["trainer.lr=3e-6", "algorithm.dual_clip=null", "model.lora.enabled=true"])
    assert cfg.rollout.group_size == 8 and cfg.algorithm.estimator == "grpo"
    assert cfg.trainer.lr == 3e-6 and cfg.algorithm.dual_clip is None and cfg.model.lora.enabled
    assert cfg.algorithm.gamma == 1.0 and cfg.algorithm.kl_coef == 0.001 and cfg.algorithm.format_penalty == -2.0


@pytest.mark.parametrize(
    "override, fragment",
    [
        (["rollout.group_sise=4"], "rollout.group_sise: unknown key"),
        (["rollout.group_size=abc"], "rollout.group_size"),
        (["algorithm.estimator=ppo"], "algorithm.estimator"),
        (["trainer.lr=-1"], "trainer.lr"),
        (["nonsense"], "key=value"),
        (["rollout.group_size=1", "algorithm.estimator=grpo"], "rollout.group_size must be >= 2"),
        (["algorithm.format_penalty=.nan"], "algorithm.format_penalty: Input should be a finite number"),
        (["trainer.max_bad_steps=0"], "trainer.max_bad_steps"),
        (
            ["algorithm.norm=raw_ig", "algorithm.gamma=0.95"],
            "algorithm.norm=raw_ig does not accumulate over turns: algorithm.gamma must stay 1.0",
        ),
        (["algorithm.norm=raw_ig", "algorithm.gamma_min_weight=0.5"], "algorithm.gamma_min_weight 0"),
        (["algorithm.ig_clip=abs"], "algorithm.ig_clip"),
        (["algorithm.turn_format_penalty=-1"], "algorithm.turn_format_penalty"),
        (["algorithm.ig_gate_ema=0"], "algorithm.ig_gate_ema"),
    ],
)
def test_bad_config_names_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(None, override)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_an_option_the_estimator_does_not_read_is_refused():
    with pytest.raises(ConfigError, match=r"algorithm.outcome_weight: not read by estimator grpo \(only by .*igpo"):
        load_config(None, ["algorithm.estimator=grpo", "algorithm.outcome_weight=0.1"])
    with pytest.raises(ConfigError, match="algorithm.gate_threshold: not read by estimator igpo"):
        load_config(None, ["algorithm.gate_threshold=0.3"])
    assert load_config(None, ["algorithm.outcome_weight=0.1"]).algorithm.outcome_weight == 0.1
    # The IG reward layer's keys go with the estimators that use IG.
    with pytest.raises(ConfigError, match="algorithm.ig_gate_threshold: not read by estimator grpo"):
        load_config(None, ["algorithm.estimator=grpo", "algorithm.ig_gate_threshold=0.2"])
    with pytest.raises(ConfigError, match="algorithm.gamma_min_weight: not read by estimator rloo"):
        load_config(None, ["algorithm.estimator=rloo", "algorithm.gamma_min_weight=0.5"])
    cfg = load_config(
        None,
        [
            "algorithm.norm=scaled_separate",
            "algorithm.ig=log_prob_diff",
            "algorithm.gamma=0.95",
            "algorithm.gamma_min_weight=0.5",
            "algorithm.ig_clip=positive",
            "algorithm.turn_format_penalty=0.5",
            "algorithm.ig_gate_threshold=0.1",
        ],
    )
    assert cfg.algorithm.norm == "scaled_separate" and cfg.algorithm.ig_gate_ema == 0.1
    # Left at its default, an unread key is no error: only what the user wrote is checked.
    assert load_config(None, ["algorithm.estimator=grpo"]).algorithm.gate_threshold == 0.5


@pytest.mark.parametrize(
    "old, new, value",
    [("algorithm.scaffold", "algorithm.belief_probe", "''"), ("algorithm.f1_mode", "algorithm.answer_norm", "squad")],
)
def test_a_renamed_key_is_refused_with_its_new_name(tmp_path, old, new, value):
    message = f"{old}: renamed to {new}".replace(".", r"\.")
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"{old}={value}"])
    section, key = old.split(".")
    p = tmp_path / "c.yaml"
    p.write_text(f"{section}:\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(p)
    cfg = load_config(None, [f"{new}={value}"])
    assert getattr(cfg.algorithm, new.split(".")[1]) == ("" if value == "''" else value)
