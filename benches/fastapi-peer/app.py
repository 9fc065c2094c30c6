"""The Python stack Tidewatch's prediction API replaces, as a benchmark peer.

FastAPI with prometheus-fastapi-instrumentator (its default RED metrics at /metrics),
serving POST /v1/predict with the same model artifact, the same validation (symbol
pattern, finite features, positive volatilities) and the same answer as the Rust service.
scripts/bench-api runs it with uvicorn, one worker, on the same core as the Rust servers.
"""

import json
import math
import os

from fastapi import FastAPI
from prometheus_fastapi_instrumentator import Instrumentator
from pydantic import BaseModel, ConfigDict, Field, field_validator

ARTIFACT = json.load(open(os.environ.get("MODEL_PATH", "models/volatility-spike.json")))
TRANSFORMS = {"identity": lambda v: v, "log": math.log, "log1p": math.log1p}


class Features(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ret_1m: float
    ret_5m: float
    vol_5m: float = Field(gt=0)
    vol_15m: float = Field(gt=0)
    volume_z: float
    trade_rate: float = Field(ge=0)

    @field_validator("*")
    @classmethod
    def finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    symbol: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$")
    features: Features


class Prediction(BaseModel):
    symbol: str
    probability: float
    spike: bool
    model_version: str
    variant: str


app = FastAPI()
Instrumentator().instrument(app).expose(app)


@app.post("/v1/predict")
def predict(request: PredictRequest) -> Prediction:
    values = [getattr(request.features, name) for name in ARTIFACT["features"]]
    logit = ARTIFACT["intercept"]
    for v, t, mean, std, w in zip(
        values,
        ARTIFACT["transforms"],
        ARTIFACT["scaler"]["mean"],
        ARTIFACT["scaler"]["std"],
        ARTIFACT["weights"],
    ):
        logit += w * (TRANSFORMS[t](v) - mean) / std
    probability = 1.0 / (1.0 + math.exp(-logit))
    return Prediction(
        symbol=request.symbol,
        probability=probability,
        spike=probability >= ARTIFACT["threshold"],
        model_version=ARTIFACT["version"],
        variant="ml",
    )
