"""Local wire-protocol fakes of Gemini and OpenAI-compatible endpoints, with faults and an offline teacher.

They live in the package (not only in tests) because the offline demo and the benchmark
run the same servers the tests use: ``python -m vr_assets.fakes {gemini,openai}``.
"""

from vr_assets.fakes.gemini import FakeGemini, UploadedFile
from vr_assets.fakes.openai import FakeOpenAI
from vr_assets.fakes.server import (
    ALL_FAULTS,
    ANSWER_FAULTS,
    ERROR_FAULTS,
    TRANSPORT_FAULTS,
    FakeServer,
    FaultPlan,
    RequestRecord,
)
from vr_assets.fakes.teacher import KNOWN_TITLES, Teacher, TeacherAnswer, Verdict, instance_from_schema, sha256_file

__all__ = [
    "ALL_FAULTS",
    "ANSWER_FAULTS",
    "ERROR_FAULTS",
    "KNOWN_TITLES",
    "TRANSPORT_FAULTS",
    "FakeGemini",
    "FakeOpenAI",
    "FakeServer",
    "FaultPlan",
    "RequestRecord",
    "Teacher",
    "TeacherAnswer",
    "UploadedFile",
    "Verdict",
    "instance_from_schema",
    "sha256_file",
]
