"""The one compiled part: the strict Debezium JSON → Arrow decoder of the Kafka consumer (bankflow/lake/batch.py).

Everything else is in pyproject.toml. The extension is optional: without a C compiler the install still works and
msgspec does its work, about a third as fast; tests/unit/test_lake_native_decoder.py fails then, so CI cannot miss it.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "bankflow.lake._envelope",
            sources=["bankflow/lake/_envelope.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
