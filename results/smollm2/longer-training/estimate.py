"""The held-out acceptance estimate of several look-ahead exports on one fixed set, as
``train.lookahead --eval-new-tokens`` makes it: each held-out row of ``--data`` keeps its first
tokens and the model writes the rest, and only those are drafted.

    python results/smollm2/longer-training/estimate.py LA_DIR [LA_DIR ...] -- FLAGS

FLAGS, after ``--``, are ``train.lookahead``'s (``--model``, ``--data``, ``-L``, the estimate's
``--temperature``, ``--top-k``, ``--eval-new-tokens``, ``--eval-batches``, ``--eval-groups``;
``--out`` is not used). ``mean`` as an LA_DIR is the untrained start. One JSON line per export.
"""

import json
import sys

from pass_jax import data, lookahead
from train import lookahead as train_lookahead


def main(argv: list[str]) -> None:
    split = argv.index("--")
    dirs, flags = argv[:split], argv[split + 1 :]
    args = train_lookahead._parse([*flags, "--out", "/nonexistent/not-written"])
    config = train_lookahead.load_config(args)
    model = train_lookahead.load_model(config, args)
    _, eval_set = train_lookahead._texts(config, data.parse_spec(config.data), model)
    L, settings = config.num_lookahead, config.lookahead
    for la_dir in dirs:
        if la_dir == "mean":
            la_LxD = lookahead.init_lookahead(model.cfg, model.params, L, init="mean")
        else:
            la_LxD = lookahead.load_lookahead(la_dir, model.cfg, model.params)[:L]
        est = train_lookahead.heldout_estimate(
            model.cfg, model.params, la_LxD, eval_set, settings.temperature, settings.top_k
        )
        print(json.dumps({"lookahead": la_dir, **est}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
