"""The tools' command-line flows, on top of the package: parse the options, check what can be checked before
the work starts (a failed check is one line ``error: ...`` and exit status 1, ``checks``), run. ``train``:
tools/train_net.py, tools/lazyconfig_train_net.py, tools/pretrain_net.py; ``predict``: tools/predict.py;
``export``: tools/export_model.py; ``convert_weights``: tools/convert_weights.py; ``options``: the options of
the tools that take a trained detector's config. Nothing in the package imports them."""
