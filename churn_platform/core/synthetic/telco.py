"""The Telco customer base the generator imitates: its values, marginals, prices and churn.

Marginals, service bundles, prices and the churn mechanism were calibrated once against the public
IBM Telco file; the project never reads that file. Categories are small integer codes (the order
of the value tuples below) until `generate` renders them as the file's text.
"""

from __future__ import annotations

from churn_platform.core.features import SERVICE_COLUMNS

# The Telco services split by what they need: phone service, or an internet connection.
PHONE_SERVICES: tuple[str, ...] = ("PhoneService", "MultipleLines")
ADD_ONS: tuple[str, ...] = tuple(c for c in SERVICE_COLUMNS if c not in PHONE_SERVICES)
CONTRACTS: tuple[str, ...] = ("Month-to-month", "One year", "Two year")
INTERNET_SERVICES: tuple[str, ...] = ("DSL", "Fiber optic", "No")
PAYMENT_METHODS: tuple[str, ...] = (
    "Electronic check",
    "Mailed check",
    "Bank transfer (automatic)",
    "Credit card (automatic)",
)
MONTH_TO_MONTH, TWO_YEAR = 0, 2
DSL, FIBER, NO_INTERNET = 0, 1, 2
ELECTRONIC_CHECK = 0

MAX_TENURE = 72
# Tenure = 1 + floor(scale * u^power), capped at 72, per contract: short for month-to-month,
# long for two-year contracts (with the Telco pile-up at 72 months). Only customers on a term
# contract can be brand new (tenure 0, no bill yet, blank TotalCharges).
TENURE_SHAPE = ((72.0, 2.6), (72.0, 0.8), (76.0, 0.3))
NEW_TERM_CONTRACT_RATE = 0.0035

# Probability tables, one row per value of the key noted, one column per category code.
GENDER_MALE = 0.505
SENIOR = 0.162
PARTNER = 0.483
DEPENDENTS_BY_PARTNER = (0.099, 0.514)
CONTRACT_BY_PARTNER = ((0.685, 0.177, 0.138), (0.405, 0.244, 0.351))
INTERNET_BY_SENIOR_CONTRACT = (
    (0.347, 0.486, 0.167),
    (0.405, 0.323, 0.272),
    (0.373, 0.231, 0.396),
    (0.197, 0.788, 0.015),
    (0.263, 0.653, 0.084),
    (0.345, 0.490, 0.165),
)
DSL_WITHOUT_PHONE = 0.28
PAPERLESS_BY_INTERNET = (0.55, 0.77, 0.29)
PAYMENT_BY_CONTRACT = (
    (0.477, 0.231, 0.152, 0.140),
    (0.236, 0.229, 0.265, 0.270),
    (0.099, 0.225, 0.333, 0.343),
)
# P(service | internet, tenure share t) = base + slope * t per internet code: long-standing
# customers buy more. Add-ons need internet; multiple lines need phone service.
SERVICE_RATE = {
    "MultipleLines": ((0.12, 0.60), (0.38, 0.50), (0.06, 0.45)),
    "OnlineSecurity": ((0.22, 0.55), (0.07, 0.45), (0.0, 0.0)),
    "OnlineBackup": ((0.25, 0.40), (0.25, 0.40), (0.0, 0.0)),
    "DeviceProtection": ((0.25, 0.40), (0.25, 0.40), (0.0, 0.0)),
    "TechSupport": ((0.22, 0.55), (0.07, 0.45), (0.0, 0.0)),
    "StreamingTV": ((0.18, 0.45), (0.35, 0.43), (0.0, 0.0)),
    "StreamingMovies": ((0.18, 0.45), (0.35, 0.43), (0.0, 0.0)),
}
# Monthly tariff in dollars: the Telco charges are this list price plus about a dollar of noise,
# and total charges are tenure x monthly within about 5 %.
PRICE_PHONE = 20.0
PRICE_INTERNET = (25.0, 50.0, 0.0)
PRICE_SERVICE = {
    "MultipleLines": 5.0,
    "OnlineSecurity": 5.0,
    "OnlineBackup": 5.0,
    "DeviceProtection": 5.0,
    "TechSupport": 5.0,
    "StreamingTV": 10.0,
    "StreamingMovies": 10.0,
}
CHARGE_NOISE, CHARGE_NOISE_CAP = 1.0, 1.75
TOTAL_NOISE, TOTAL_RATIO_RANGE = 0.05, (0.7, 1.5)

# Churn log-odds = intercept + sum(coefficient * feature). `drift` interpolates linearly from a
# Telco-like mechanism (contract, short tenure, fiber, electronic check, no security or support,
# seniors) to a market where a cheaper competitor poaches price-sensitive, long-standing and DSL
# customers, so a model fitted on undrifted data ranks drifted customers poorly.
CHURN_UNDRIFTED = {
    "intercept": -1.46,
    "month_to_month": 0.8,
    "two_year": -0.9,
    "log_tenure": -0.55,
    "charges_per_100": 0.8,
    "fiber": 0.5,
    "no_internet": -0.5,
    "electronic_check": 0.45,
    "no_security": 0.35,
    "no_support": 0.35,
    "senior": 0.3,
    "paperless": 0.3,
    "dependents": -0.2,
}
CHURN_DRIFTED = {
    "intercept": -5.3,
    "month_to_month": 0.4,
    "two_year": -0.4,
    "log_tenure": 0.7,
    "charges_per_100": 4.0,
    "fiber": -2.0,
    "no_internet": -0.5,
    "electronic_check": 0.0,
    "no_security": 0.0,
    "no_support": 0.0,
    "senior": 0.0,
    "paperless": 0.0,
    "dependents": 0.0,
}
# How far drift=1 tilts the population: this share of the other customers moves to
# month-to-month and to fiber, and list prices rise.
DRIFT_MONTH_TO_MONTH = 0.2
DRIFT_FIBER = 0.3
DRIFT_PRICE_RISE = 0.12
