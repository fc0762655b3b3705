"""The DeepSpeed configs shipped with gptscale (installed as the package data of gptscale.ds_configs, so
`--train.ds_config=ds_configs/zero2.json` works from any directory; see gptscale.runtime.engine)."""
