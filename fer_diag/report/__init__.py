"""The report: a versioned pydantic document and its renderings (Markdown, HTML, terminal, plots)."""

from fer_diag.report.schema import SCHEMA_VERSION, Report, ReportFileError, ReportVersionError

__all__ = ["SCHEMA_VERSION", "Report", "ReportFileError", "ReportVersionError"]
