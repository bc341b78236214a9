"""Which value a serve: step serves, when the reader could not tell (`converter.notebook.served`).

Like the runtime, this source is embedded in step programs (only those of serve: steps whose model
the reader left to run time, after the runtime and before the spec), so it stays self-contained: the
frameworks are looked up in ``sys.modules``, never imported (a value of a framework the step did not
import cannot be its model).
"""

from __future__ import annotations

import sys
import types
from typing import Any


def choose_model(namespace: dict[str, Any], serve: dict[str, Any]) -> str:
    """The one candidate that is a model of the framework (fitted ones first); ValueError otherwise."""
    framework, tag = serve["framework"], f"serve:{serve['framework']}"
    models = [n for n in serve["candidates"] if n in namespace and _is_model(namespace[n], framework)]
    fitted = [n for n in models if _fitted(namespace[n])] if framework == "sklearn" else []
    chosen = fitted or models
    if len(chosen) == 1:
        return str(chosen[0])
    if not chosen:
        names = ", ".join(serve["candidates"])
        raise ValueError(f"{tag}: none of {names} is a {framework} model; tag the step {tag}:VARIABLE")
    raise ValueError(f"{tag}: {', '.join(chosen)} are all {framework} models; name one: {tag}:{chosen[0]}")


def _is_model(value: Any, framework: str) -> bool:
    if isinstance(value, type | types.ModuleType):
        return False
    if framework == "sklearn":
        base = sys.modules.get("sklearn.base")
        return (
            base is not None
            and isinstance(value, base.BaseEstimator)
            and callable(getattr(value, "predict", None))
        )
    if framework == "xgboost":
        xgb = sys.modules.get("xgboost")
        return xgb is not None and isinstance(value, xgb.Booster | xgb.XGBModel)
    if framework == "pytorch":
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(value, torch.nn.Module)
    return callable(getattr(value, "predict", None))  # custom: the user's predictor calls predict()


def _fitted(value: Any) -> bool:
    """A scikit-learn estimator that was fitted (an unfitted template loses to the fitted model)."""
    import sklearn.utils.validation as validation

    try:
        validation.check_is_fitted(value)
    except Exception:
        return False
    return True
