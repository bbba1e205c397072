"""Every error dvt raises to a caller: one class per stable code.

A caller branches on ``error.code`` (a string that never changes meaning), shows ``str(error)``
to people, and may retry when ``error.retryable`` is true. ``details`` is JSON-safe data.

Every coded class belongs to exactly one family (``PlanError``, ``RunError``, ``SignalError``,
``StepError``, ``StoreError``, ``EngineError``, ``RequestError``), so a caller can catch a
whole kind of failure with one ``except``. Families carry no code of their own.

One module on purpose, although it is long: it is the single table of codes that
docs/errors.md is generated from and that a test checks for one class per code; split by
family, a new code could land in two places or none.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar


class ErrorCode(StrEnum):
    """The stable error codes of dvt (contract §11, plus the ones dvt adds)."""

    PLAN_URI_NOT_ALLOWED = "PLAN_URI_NOT_ALLOWED"
    PLAN_INTEGRITY_VALIDATION_FAILED = "PLAN_INTEGRITY_VALIDATION_FAILED"
    PLAN_SCHEMA_VERSION_UNSUPPORTED = "PLAN_SCHEMA_VERSION_UNSUPPORTED"
    PLAN_NOT_FOUND = "PLAN_NOT_FOUND"
    PLAN_FETCH_FAILED = "PLAN_FETCH_FAILED"
    SCHEMA_VALIDATION_FAILED = "SCHEMA_VALIDATION_FAILED"
    PLAN_INVALID = "PLAN_INVALID"
    STEP_KIND_UNKNOWN = "STEP_KIND_UNKNOWN"
    CAPABILITY_NOT_SUPPORTED = "CAPABILITY_NOT_SUPPORTED"
    PLAN_CONDITION_INVALID = "PLAN_CONDITION_INVALID"
    PLAN_JOIN_INVALID = "PLAN_JOIN_INVALID"
    PLAN_FOREACH_INVALID = "PLAN_FOREACH_INVALID"
    PLAN_RESOURCE_CLASS_UNKNOWN = "PLAN_RESOURCE_CLASS_UNKNOWN"
    PLAN_SIGNAL_INVALID = "PLAN_SIGNAL_INVALID"
    PLAN_DOWNGRADE_UNSUPPORTED = "PLAN_DOWNGRADE_UNSUPPORTED"
    RUN_NOT_FOUND = "RUN_NOT_FOUND"
    RUN_NOT_APPROVED = "RUN_NOT_APPROVED"
    TENANT_MISMATCH = "TENANT_MISMATCH"
    SIGNAL_INVALID_PAYLOAD = "SIGNAL_INVALID_PAYLOAD"
    SIGNAL_UNAUTHORIZED = "SIGNAL_UNAUTHORIZED"
    SIGNAL_RATE_LIMITED = "SIGNAL_RATE_LIMITED"
    SIGNAL_UNKNOWN = "SIGNAL_UNKNOWN"
    SIGNAL_NOT_AWAITED = "SIGNAL_NOT_AWAITED"
    RUN_TERMINAL = "RUN_TERMINAL"
    STEP_NOT_FOUND = "STEP_NOT_FOUND"
    STEP_NOT_RETRYABLE = "STEP_NOT_RETRYABLE"
    RUN_ALREADY_RETRIED = "RUN_ALREADY_RETRIED"
    STEP_TERMINAL = "STEP_TERMINAL"
    STEP_NOT_AWAITING_APPROVAL = "STEP_NOT_AWAITING_APPROVAL"
    STEP_FAILED = "STEP_FAILED"
    STEP_CANCELLED = "STEP_CANCELLED"
    STEP_TIMEOUT = "STEP_TIMEOUT"
    STEP_OUTPUT_TOO_LARGE = "STEP_OUTPUT_TOO_LARGE"
    FOREACH_TOO_MANY_ITEMS = "FOREACH_TOO_MANY_ITEMS"
    FOREACH_ITEMS_INVALID = "FOREACH_ITEMS_INVALID"
    APPROVAL_REJECTED = "APPROVAL_REJECTED"
    APPROVAL_TIMEOUT = "APPROVAL_TIMEOUT"
    SIGNAL_WAIT_TIMEOUT = "SIGNAL_WAIT_TIMEOUT"
    OPERATOR_TIMEOUT = "OPERATOR_TIMEOUT"
    PAUSE_DRAIN_TIMEOUT = "PAUSE_DRAIN_TIMEOUT"
    IDENTIFIER_INVALID = "IDENTIFIER_INVALID"
    LABELS_INVALID = "LABELS_INVALID"
    ILLEGAL_TRANSITION = "ILLEGAL_TRANSITION"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    ENGINE_UNAVAILABLE = "ENGINE_UNAVAILABLE"
    API_UNAVAILABLE = "API_UNAVAILABLE"
    ENGINE_NOT_FOUND = "ENGINE_NOT_FOUND"
    ENGINE_NOT_CONFIGURED = "ENGINE_NOT_CONFIGURED"
    STORE_NOT_FOUND = "STORE_NOT_FOUND"
    SECRET_NOT_FOUND = "SECRET_NOT_FOUND"
    USAGE_ERROR = "USAGE_ERROR"
    PLAN_SECRET_LITERAL = "PLAN_SECRET_LITERAL"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    ARTIFACT_NOT_FOUND = "ARTIFACT_NOT_FOUND"
    ARTIFACT_CORRUPT = "ARTIFACT_CORRUPT"
    ARTIFACT_STORE_NOT_CONFIGURED = "ARTIFACT_STORE_NOT_CONFIGURED"
    ARTIFACT_STORE_UNAVAILABLE = "ARTIFACT_STORE_UNAVAILABLE"
    ARCHIVE_UNAVAILABLE = "ARCHIVE_UNAVAILABLE"
    ARCHIVE_CORRUPT = "ARCHIVE_CORRUPT"
    ARCHIVE_BUSY = "ARCHIVE_BUSY"
    AUDIT_BUSY = "AUDIT_BUSY"
    ERASURE_REFUSED = "ERASURE_REFUSED"
    CONNECTION_NOT_FOUND = "CONNECTION_NOT_FOUND"
    STEP_PARAMS_INVALID = "STEP_PARAMS_INVALID"
    STEP_DEPENDENCY_MISSING = "STEP_DEPENDENCY_MISSING"
    SQL_ERROR = "SQL_ERROR"
    SQL_FILE_NOT_ALLOWED = "SQL_FILE_NOT_ALLOWED"
    HTTP_URI_NOT_ALLOWED = "HTTP_URI_NOT_ALLOWED"
    HTTP_REQUEST_FAILED = "HTTP_REQUEST_FAILED"
    HTTP_STATUS = "HTTP_STATUS"
    HTTP_RESPONSE_TOO_LARGE = "HTTP_RESPONSE_TOO_LARGE"
    SHELL_COMMAND_NOT_ALLOWED = "SHELL_COMMAND_NOT_ALLOWED"
    SHELL_COMMAND_NOT_FOUND = "SHELL_COMMAND_NOT_FOUND"
    SHELL_EXIT_NONZERO = "SHELL_EXIT_NONZERO"
    STEP_PATH_NOT_ALLOWED = "STEP_PATH_NOT_ALLOWED"
    DBT_NODES_FAILED = "DBT_NODES_FAILED"
    DBT_INVOCATION_FAILED = "DBT_INVOCATION_FAILED"
    SPARK_SUBMIT_FAILED = "SPARK_SUBMIT_FAILED"
    RATE_LIMITED = "RATE_LIMITED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    LIMITS_INVALID = "LIMITS_INVALID"
    USAGE_QUERY_INVALID = "USAGE_QUERY_INVALID"


class DvtError(Exception):
    """Base of every dvt error: a stable ``code``, a message, ``retryable`` and ``details``."""

    code: ClassVar[ErrorCode]
    default_retryable: ClassVar[bool] = False
    hint: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.retryable = self.default_retryable if retryable is None else retryable

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """The error as JSON-safe data: ``{code, message, retryable, details}``."""
        return {
            "code": str(self.code),
            "message": self.message,
            "retryable": self.retryable,
            "details": self.details,
        }


class PlanError(DvtError):
    """Family: the plan cannot be fetched, trusted, parsed or run as written."""


class RunError(DvtError):
    """Family: the run does not exist for the caller, or its lifecycle forbids what was asked."""


class SignalError(DvtError):
    """Family: an operator signal was malformed, not allowed, or does not fit the step's state."""


class StepError(DvtError):
    """Family: a step did not complete (handler failure, timeout, cancel, approval outcome)."""


class StoreError(DvtError):
    """Family: the state store is missing or unreachable."""


class EngineError(DvtError):
    """Family: the workflow engine is missing, not configured or unreachable."""


class RequestError(DvtError):
    """Family: the caller used an API or command the wrong way (bad identifier, bad option)."""


FAMILIES: tuple[type[DvtError], ...] = (
    PlanError, RunError, SignalError, StepError, StoreError, EngineError, RequestError,
)


class PlanUriNotAllowed(PlanError):
    """The plan URI is outside the allowlist; it was not fetched."""

    code = ErrorCode.PLAN_URI_NOT_ALLOWED
    hint = "Store the plan in the registry (plan://sha256/...) or allowlist its host."


class PlanIntegrityValidationFailed(PlanError):
    """The fetched plan bytes do not hash to the expected sha256."""

    code = ErrorCode.PLAN_INTEGRITY_VALIDATION_FAILED
    hint = "The plan changed after it was referenced; reference the new digest."


class PlanSchemaVersionUnsupported(PlanError):
    """The plan declares a schemaVersion this dvt does not know."""

    code = ErrorCode.PLAN_SCHEMA_VERSION_UNSUPPORTED
    hint = "Supported schema versions: v1.0, v1.1, v1.2, v1.3."


class PlanNotFound(PlanError):
    """No plan is stored under that reference."""

    code = ErrorCode.PLAN_NOT_FOUND
    hint = "Store the plan first (dvt run stores it for you)."


class PlanFetchFailed(PlanError):
    """The plan could not be fetched (network or server error)."""

    code = ErrorCode.PLAN_FETCH_FAILED
    default_retryable = True


class SchemaValidationFailed(PlanError):
    """A plan, event or payload does not match its JSON Schema."""

    code = ErrorCode.SCHEMA_VALIDATION_FAILED
    hint = "See details.errors for the failing paths."


class PlanInvalid(PlanError):
    """The plan breaks a DAG rule (unknown dependency, cycle, duplicate stepId)."""

    code = ErrorCode.PLAN_INVALID
    hint = "Run `dvt validate PLAN` to see every problem at once."


class StepKindUnknown(PlanError):
    """A step's kind has no registered handler."""

    code = ErrorCode.STEP_KIND_UNKNOWN
    hint = "Register a handler for the kind, or fix the kind's name."


class CapabilityNotSupported(PlanError):
    """The plan requires a capability the engine lacks and its fallback is 'reject'."""

    code = ErrorCode.CAPABILITY_NOT_SUPPORTED
    hint = "Pick another engine or set fallbackBehavior to 'emulate' or 'degrade'."


class PlanConditionInvalid(PlanError):
    """A step's ``when`` condition does not compile, or reads something it may not."""

    code = ErrorCode.PLAN_CONDITION_INVALID
    hint = "A condition is CEL over params and steps.<id>.status/.output of settled steps."


class PlanJoinInvalid(PlanError):
    """A step's join or concurrency settings cannot be met (quorum count, group limits)."""

    code = ErrorCode.PLAN_JOIN_INVALID
    hint = "See details.problem; docs/plans.md describes join, maxParallel and groups."


class PlanForEachInvalid(PlanError):
    """A step's forEach names an unknown or later source, or lacks a usable maxItems bound."""

    code = ErrorCode.PLAN_FOREACH_INVALID
    hint = "See details.rule; docs/plans.md describes forEach, its source and maxItems."


class PlanResourceClassUnknown(PlanError):
    """A step names a resource class that metadata.resourceClasses does not declare."""

    code = ErrorCode.PLAN_RESOURCE_CLASS_UNKNOWN
    hint = "Declare the class in metadata.resourceClasses or fix the step's resourceClass."


class PlanSignalInvalid(PlanError):
    """A plan's custom signals are malformed, or a step waits for one it does not declare."""

    code = ErrorCode.PLAN_SIGNAL_INVALID
    hint = "See details.rule; docs/plans.md describes signals and waitForSignal."


class PlanDowngradeUnsupported(PlanError):
    """The plan uses fields the older schema version does not have."""

    code = ErrorCode.PLAN_DOWNGRADE_UNSUPPORTED
    hint = "Remove the fields listed in details.fields, then downgrade."


class RunNotFound(RunError):
    """No run with that id exists for this tenant."""

    code = ErrorCode.RUN_NOT_FOUND


class RunNotApproved(RunError):
    """The run's plan requires approval and the run has not been approved."""

    code = ErrorCode.RUN_NOT_APPROVED


class TenantMismatch(RunError):
    """The caller's tenant does not own the run (reported like RUN_NOT_FOUND to callers)."""

    code = ErrorCode.TENANT_MISMATCH


class SignalInvalidPayload(SignalError):
    """A signal's payload does not match the signal's schema."""

    code = ErrorCode.SIGNAL_INVALID_PAYLOAD


class SignalUnknown(SignalError):
    """A CUSTOM signal names a signal type the run's plan does not declare."""

    code = ErrorCode.SIGNAL_UNKNOWN
    hint = "Send one of the signal names the plan declares in metadata.signals."


class SignalNotAwaited(SignalError):
    """A CUSTOM signal arrived while no step of the run waits for it (recorded refusal)."""

    code = ErrorCode.SIGNAL_NOT_AWAITED
    hint = "Send it while the step that waits for it is waiting (substatus AWAITING_APPROVAL)."


class SignalUnauthorized(SignalError):
    """The actor's roles do not allow this signal."""

    code = ErrorCode.SIGNAL_UNAUTHORIZED


class SignalRateLimited(SignalError):
    """Too many signals for this run in the current minute."""

    code = ErrorCode.SIGNAL_RATE_LIMITED
    default_retryable = True


class RunTerminal(RunError):
    """The run is COMPLETED, FAILED or CANCELLED and accepts nothing more."""

    code = ErrorCode.RUN_TERMINAL


class StepNotFound(SignalError):
    """The step named by a signal is not in the run's plan."""

    code = ErrorCode.STEP_NOT_FOUND


class StepNotRetryable(SignalError):
    """RETRY_STEP on a step that is not FAILED."""

    code = ErrorCode.STEP_NOT_RETRYABLE


class RunAlreadyRetried(SignalError):
    """RETRY_RUN on a run that an earlier accepted RETRY_RUN already retried (message names it)."""

    code = ErrorCode.RUN_ALREADY_RETRIED
    hint = "Look at the run the message names; retry that run if it failed too."


class StepTerminal(SignalError):
    """SKIP_STEP on a step that already ran or is running."""

    code = ErrorCode.STEP_TERMINAL


class StepNotAwaitingApproval(SignalError):
    """APPROVE_STEP on a step that is not an approval gate waiting for a decision."""

    code = ErrorCode.STEP_NOT_AWAITING_APPROVAL


class StepFailed(StepError):
    """A step handler failed; ``retryable`` says whether the engine may retry it."""

    code = ErrorCode.STEP_FAILED
    default_retryable = True


class StepCancelled(StepError):
    """A running step was asked to stop (CANCEL, or pause with cancelInFlightOnPause)."""

    code = ErrorCode.STEP_CANCELLED


class StepTimeout(StepError):
    """A step ran longer than its timeoutMs."""

    code = ErrorCode.STEP_TIMEOUT
    default_retryable = True


class StepOutputTooLarge(StepError):
    """A step's JSON output exceeds 32 KiB; large data belongs in artifacts."""

    code = ErrorCode.STEP_OUTPUT_TOO_LARGE


class ForEachTooManyItems(StepError):
    """A forEach list is longer than its maxItems: the step fails before any child starts."""

    code = ErrorCode.FOREACH_TOO_MANY_ITEMS


class ForEachItemsInvalid(StepError):
    """A forEach source is missing or is not a list: the step fails before any child starts."""

    code = ErrorCode.FOREACH_ITEMS_INVALID


class ApprovalRejected(StepError):
    """An approver rejected an approval gate."""

    code = ErrorCode.APPROVAL_REJECTED


class ApprovalTimeout(StepError):
    """An approval gate waited longer than its timeoutMs."""

    code = ErrorCode.APPROVAL_TIMEOUT


class SignalWaitTimeout(StepError):
    """A step waiting for a custom signal waited longer than its timeoutMs (onTimeout fail)."""

    code = ErrorCode.SIGNAL_WAIT_TIMEOUT


class OperatorTimeout(RunError):
    """A run awaiting an operator waited longer than operatorTimeoutMs."""

    code = ErrorCode.OPERATOR_TIMEOUT


class PauseDrainTimeout(RunError):
    """Steps running at pause did not settle within the drain timeout."""

    code = ErrorCode.PAUSE_DRAIN_TIMEOUT
    default_retryable = True


class RateLimited(RunError):
    """The tenant is over a limit on active runs, run starts, signals or queued runs."""

    code = ErrorCode.RATE_LIMITED
    default_retryable = True
    hint = "Retry after details.retryAfterS seconds, or raise the tenant's limits."


class QuotaExceeded(RunError):
    """A plan over maxPlanSteps/Bytes, or a start once a ``block`` monthly budget is spent."""

    code = ErrorCode.QUOTA_EXCEEDED
    hint = ("Make the plan smaller, or raise the tenant's maxPlanSteps or maxPlanBytes; for"
            " details.kind budget, raise monthlyBudgetUnits or wait for the next month.")


class LimitsInvalid(RequestError):
    """Tenant limits that are not whole numbers in range, or name an unknown field."""

    code = ErrorCode.LIMITS_INVALID


class UsageQueryInvalid(RequestError):
    """A usage query with a bad date, an empty or too long window, or an unknown groupBy."""

    code = ErrorCode.USAGE_QUERY_INVALID
    hint = "Dates are YYYY-MM-DD, to after from, at most 367 days; groupBy plan, run or day."


class IdentifierInvalid(RequestError):
    """An identifier is empty, too long, or contains '|' or a control character."""

    code = ErrorCode.IDENTIFIER_INVALID
    hint = "Identifiers are 1-200 characters without '|' or control characters."


class LabelsInvalid(RequestError):
    """A run's labels, or a label filter, break the label rules (docs/client.md#labels)."""

    code = ErrorCode.LABELS_INVALID
    hint = (
        "At most 20 labels; keys are 1-63 of a-z 0-9 _ . - / starting with a letter or digit;"
        " values at most 200 characters without control characters; no secrets."
    )


class IllegalTransition(RunError):
    """An event would move a run or step through a transition its state machine forbids."""

    code = ErrorCode.ILLEGAL_TRANSITION


class StoreUnavailable(StoreError):
    """The state store cannot be reached."""

    code = ErrorCode.STORE_UNAVAILABLE
    default_retryable = True
    hint = "Check the store URL (DVT_STORE_URL) and that the database is up."


class EngineUnavailable(EngineError):
    """The workflow engine cannot be reached."""

    code = ErrorCode.ENGINE_UNAVAILABLE
    default_retryable = True
    hint = "Check the engine address, or start local servers with `dvt dev up`."


class ApiUnavailable(EngineError):
    """The dvt service (`dvt --api URL`) cannot be reached."""

    code = ErrorCode.API_UNAVAILABLE
    default_retryable = True
    hint = "Check --api / DVT_API_URL and that `dvt serve` is up."


class EngineNotFound(EngineError):
    """No engine is installed under that name."""

    code = ErrorCode.ENGINE_NOT_FOUND
    hint = "Install the adapter's extra, e.g. pip install 'dvt[temporal]'."


class EngineNotConfigured(EngineError):
    """The engine has no server address, and dvt never starts a server behind a library call."""

    code = ErrorCode.ENGINE_NOT_CONFIGURED
    hint = (
        "Pass the address (TemporalSettings(address=...) / ConductorSettings(server_url=...) or "
        "DVT_TEMPORAL_ADDRESS / DVT_CONDUCTOR_URL), or start local servers with `dvt dev up`."
    )


class PlanSecretLiteral(PlanError):
    """A plan's params hold a secret-looking literal (password, key, token); only references may."""

    code = ErrorCode.PLAN_SECRET_LITERAL
    hint = 'Store the secret outside the plan and reference it: {"secretRef": "env:NAME"}.'


class IdempotencyConflict(StoreError):
    """An idempotency key already stored for a run names a different event type or payload."""

    code = ErrorCode.IDEMPOTENCY_CONFLICT
    hint = (
        "A retry must send the same event; a different event needs its own key (see"
        " docs/idempotency.md)."
    )


class StoreNotFound(StoreError):
    """No store is installed for that URL scheme."""

    code = ErrorCode.STORE_NOT_FOUND
    hint = "Use memory:// or install the extra for your store, e.g. pip install 'dvt[postgres]'."


class SecretNotFound(StepError):
    """A secret reference could not be resolved by the secrets provider."""

    code = ErrorCode.SECRET_NOT_FOUND


class UsageError(RequestError):
    """The caller used an API or command the wrong way."""

    code = ErrorCode.USAGE_ERROR


class ArtifactNotFound(StoreError):
    """The artifact store holds no object for that reference."""

    code = ErrorCode.ARTIFACT_NOT_FOUND
    hint = "Record only refs returned by ctx.artifacts.put; artifacts are never made up by hand."


class ArtifactCorrupt(StoreError):
    """The bytes read back do not hash to the reference's sha256: they were changed at rest."""

    code = ErrorCode.ARTIFACT_CORRUPT
    hint = "The object was altered outside dvt; restore it from a backup or produce it again."


class ArtifactStoreUnavailable(StoreError):
    """The artifact store cannot be reached or refused access (network, credentials, bucket)."""

    code = ErrorCode.ARTIFACT_STORE_UNAVAILABLE
    default_retryable = True
    hint = ("Check DVT_ARTIFACTS_URL, the endpoint and the credentials, and that the bucket or"
            " directory exists.")


class ArchiveUnavailable(StoreError):
    """The cold archive (a directory or an S3 bucket of Parquet files) cannot be read or written."""

    code = ErrorCode.ARCHIVE_UNAVAILABLE
    default_retryable = True
    hint = ("Check DVT_ARCHIVE_URL, the endpoint and the credentials (DVT_ARCHIVE_ENDPOINT_URL,"
            " DVT_ARCHIVE_ACCESS_KEY_ID, DVT_ARCHIVE_SECRET_ACCESS_KEY) and that the bucket or"
            " directory exists.")


class ArchiveCorrupt(StoreError):
    """An archive file does not match its manifest (content hash or rows): altered at rest."""

    code = ErrorCode.ARCHIVE_CORRUPT
    hint = "The file was changed outside dvt; restore it from a backup of the archive."


class ArchiveBusy(StoreError):
    """Another archiver is working on this store; one archiver runs at a time."""

    code = ErrorCode.ARCHIVE_BUSY
    default_retryable = True
    hint = "Wait for the other `dvt archive run` to finish, then run it again."


class AuditBusy(StoreError):
    """Another audit sealer is working on this store; one sealer runs at a time."""

    code = ErrorCode.AUDIT_BUSY
    default_retryable = True
    hint = "Wait for the other `dvt audit seal` to finish, then run it again."


class ErasureRefused(RequestError):
    """A purge or retention removal was refused: no admin actor, no signing key for sealed
    runs, or the tenant still has runs in progress."""

    code = ErrorCode.ERASURE_REFUSED
    hint = ("Purge as an admin actor with the audit signing key, after the tenant's runs have"
            " ended (cancel them first); see docs/retention.md.")


class ArtifactStoreNotConfigured(StepError):
    """A handler asked for ctx.artifacts but the engine was opened without an artifact store."""

    code = ErrorCode.ARTIFACT_STORE_NOT_CONFIGURED
    hint = ("Open the engine with artifacts=open_artifact_store(...), or install the artifacts"
            " extra (pip install 'dvt[artifacts]') for the default local store.")


class ConnectionNotFound(StepError):
    """A step names a connection the host has not configured."""

    code = ErrorCode.CONNECTION_NOT_FOUND
    hint = "Define it: DVT_CONNECTIONS__<NAME>__URL (and __PASSWORD_REF for its secret)."


class StepParamsInvalid(StepError):
    """A step's params do not match its kind's params schema; checked before any work starts."""

    code = ErrorCode.STEP_PARAMS_INVALID
    hint = "See details.errors for the failing params and docs/steps.md for the kind's params."


class StepDependencyMissing(StepError):
    """A step kind needs a library that is not installed on the worker."""

    code = ErrorCode.STEP_DEPENDENCY_MISSING
    hint = "Install the kind's extra on the worker, e.g. pip install 'dvt[steps-sql]'."


class SqlError(StepError):
    """The database refused or failed a ``sql`` step's statement (details.sqlstate says why)."""

    code = ErrorCode.SQL_ERROR
    hint = "Fix the statement; connection and serialization failures are retryable."


class SqlFileNotAllowed(StepError):
    """A ``sql`` step's file is outside the host's allowed SQL roots (or none are set)."""

    code = ErrorCode.SQL_FILE_NOT_ALLOWED
    hint = 'Put the file under a root listed in DVT_STEPS_SQL_FILE_ROOTS (a JSON list).'


class HttpUriNotAllowed(StepError):
    """An ``http`` step's URL is outside the allowlist or reaches a non-public address."""

    code = ErrorCode.HTTP_URI_NOT_ALLOWED
    hint = "Allowlist the origin in DVT_STEPS_HTTP_ALLOWED_HOSTS (same form as plan URI hosts)."


class HttpRequestFailed(StepError):
    """An ``http`` step could not complete its exchange (DNS, connect, TLS, protocol)."""

    code = ErrorCode.HTTP_REQUEST_FAILED
    default_retryable = True


class HttpStatus(StepError):
    """An ``http`` step's response status was not the expected one (429 and 5xx are retryable)."""

    code = ErrorCode.HTTP_STATUS


class HttpResponseTooLarge(StepError):
    """An ``http`` step's response body is larger than the host allows."""

    code = ErrorCode.HTTP_RESPONSE_TOO_LARGE
    hint = "Raise DVT_STEPS_HTTP_MAX_RESPONSE_BYTES or fetch less."


class ShellCommandNotAllowed(StepError):
    """A ``shell`` step's command is not on the host's command allowlist (empty by default)."""

    code = ErrorCode.SHELL_COMMAND_NOT_ALLOWED
    hint = 'List the commands in DVT_STEPS_SHELL_COMMANDS (a JSON list; ["*"] allows any).'


class ShellCommandNotFound(StepError):
    """A ``shell`` step's argv[0] is not an executable on the step's PATH, or cwd is missing."""

    code = ErrorCode.SHELL_COMMAND_NOT_FOUND


class ShellExitNonzero(StepError):
    """A ``shell`` step's command exited with a non-zero status or was killed by a signal."""

    code = ErrorCode.SHELL_EXIT_NONZERO
    default_retryable = True


class StepPathNotAllowed(StepError):
    """A step names a project or application path outside the host's allowed roots."""

    code = ErrorCode.STEP_PATH_NOT_ALLOWED
    hint = "Move it under an allowed root, or add its folder to DVT_STEPS_ALLOWED_ROOTS."


class DbtNodesFailed(StepError):
    """dbt ran, but models, seeds or tests failed or errored; the message names the node ids."""

    code = ErrorCode.DBT_NODES_FAILED
    hint = "Read the step's dbt.log and dbt.run_results artifacts, fix the nodes, retry the step."


class DbtInvocationFailed(StepError):
    """dbt stopped before running nodes: the project, profile or connection is unusable."""

    code = ErrorCode.DBT_INVOCATION_FAILED
    default_retryable = True
    hint = "The message says why; a database that is down is retried, a broken project is not."


class SparkSubmitFailed(StepError):
    """spark-submit exited with a non-zero status."""

    code = ErrorCode.SPARK_SUBMIT_FAILED
    default_retryable = True
    hint = "Read the step's spark.driver_log artifact for the application's stack trace."


def _coded_classes() -> list[type[DvtError]]:
    """The coded classes defined here (families and subclasses elsewhere are not listed)."""
    found: list[type[DvtError]] = []
    pending: list[type[DvtError]] = list(DvtError.__subclasses__())
    while pending:
        cls = pending.pop(0)
        if cls.__module__ == __name__ and "code" in vars(cls):
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


ERROR_CLASSES: dict[ErrorCode, type[DvtError]] = {cls.code: cls for cls in _coded_classes()}


def family_of(cls: type[DvtError]) -> type[DvtError]:
    """The family a coded error class belongs to (USAGE_ERROR when it has none)."""
    for family in FAMILIES:
        if issubclass(cls, family):
            return family
    raise UsageError(f"{cls.__name__} belongs to no error family",
                     details={"class": cls.__name__})


def error_from_dict(data: dict[str, Any]) -> DvtError:
    """Rebuild a coded error from ``DvtError.to_dict()`` output (e.g. across a process boundary)."""
    code = ErrorCode(data["code"])
    cls = ERROR_CLASSES[code]
    return cls(
        str(data.get("message", "")),
        details=data.get("details") or {},
        retryable=data.get("retryable"),
    )
