"""How the dictionary commands (sae, transcoder, crosscoder) print their results as text;
--json prints the same dicts whole."""

from __future__ import annotations


def print_result(result: dict, indent: int = 0) -> None:
    """`key: value` lines, nested dicts indented; lists of more than 8 items are left to --json."""
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{' ' * indent}{key}:")
            print_result(value, indent + 2)
        elif not isinstance(value, (list, tuple)) or len(value) <= 8:
            text = (
                f"{value:.4g}"
                if isinstance(value, float)
                else ", ".join(map(str, value))
                if isinstance(value, (list, tuple))
                else value
            )
            print(f"{' ' * indent}{key:>20}: {text}")


def marked(tokens: list[str], centre: int, sep: str = "") -> str:
    """A context's tokens as one line (newlines and tabs escaped), the one at `centre` «marked»."""
    return sep.join(f"«{escape(t)}»" if i == centre else escape(t) for i, t in enumerate(tokens))


def escape(token: str) -> str:
    return repr(token)[1:-1]


def print_features(result: dict) -> None:
    print(f"top contexts per feature of {result['sae']} (activation, context; «token» is where it fired):")
    for row in result["features"]:
        print(f"  feature {row['feature']:>6} {row['value']:8.3f}  {marked(row['tokens'], row['centre'])}")


def print_meta(result: dict) -> None:
    dead = result["dead_meta_fraction"]
    print(
        f"meta-SAE ({result['arch']}): {result['d_sae']} latents built from {result['meta_d_sae']} meta-latents; "
        f"L0 {result['l0']:.2f}, FVU {result['fvu']:.4f}, cosine {result['cosine']:.4f}, dead meta-latents {dead:.1%}"
    )
    if result["composition"]:
        print(f"  {'latent':>8}  meta-latent (weight), strongest first")
        for latent, parts in result["composition"].items():
            print(f"  {latent:>8}  " + (", ".join(f"{j} ({w:.3f})" for j, w in parts) or "none"))
    if result["out"]:
        print(f"saved to {result['out']}")


def print_error(result: dict) -> None:
    value = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    print(
        f"error of the dictionary at {result['hook_name']} ({result['model_name']}): {result['n_tokens']} tokens, "
        f"ridge fit on {result['n_train']}, scored on {result['n_test']}"
    )
    for label, key in (
        ("R² of ‖error‖ from the input", "norm_r2"),
        ("R² of the error vector from the input", "vector_r2"),
        ("R² of ‖error‖ from ‖input‖", "input_norm_r2"),
        ("mean ‖error‖", "mean_error_norm"),
        ("FVU", "fvu"),
    ):
        print(f"  {label:<40} {value(result[key])}")
    if result["largest_errors"]:
        print(f"  largest errors:\n  {'context':>8} {'position':>8} {'‖error‖':>10}  token")
        for row in result["largest_errors"]:
            print(f"  {row['context']:>8} {row['position']:>8} {row['norm']:>10.4f}  {escape(row['token'])}")
