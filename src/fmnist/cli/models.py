"""`fmnist models`: the registered models, their recipes and options."""

from __future__ import annotations

def add_parser(commands) -> None:
    listing = commands.add_parser("models", help="list the registered models and their recipes",
                                  description="List the registered models, what each is, and "
                                  "the training preset `fmnist train --model NAME` uses.")
    listing.set_defaults(subparser=listing)


def run(args) -> int:
    import inspect

    from fmnist.models import describe, get_factory, model_names, model_preset

    for name in model_names():
        recipe = model_preset(name)
        chosen = recipe.pop("model_options", {})  # the preset's factory arguments
        preset = ", ".join(f"{k}={v}" for k, v in recipe.items()) or "the defaults"
        options = ", ".join(f"{p.name}={chosen.get(p.name, p.default)!r}"
                            for p in inspect.signature(get_factory(name)).parameters.values())
        print(f"{name:<12} {describe(name)}\n{'':<12} recipe: {preset}\n"
              f"{'':<12} options (--model-option KEY=VALUE): {options or 'none'}")
    return 0
