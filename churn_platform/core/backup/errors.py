"""What can go wrong with a backup, and the exit code the CLI gives each failure.

One module for every layer's errors: storage, verification and restore all raise them, and the
CLI maps `exit_code` to its exit status without knowing which layer failed.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_VERIFICATION_FAILED = 3
EXIT_UNSAFE_ARCHIVE = 4
EXIT_NOT_FOUND = 5


class BackupError(Exception):
    """A backup, verification or restore failed; `exit_code` is what the CLI exits with."""

    exit_code = EXIT_FAILED


class UsageError(BackupError):
    """Bad arguments or configuration (partition, component, target, key)."""

    exit_code = EXIT_USAGE


class BackupNotFoundError(BackupError):
    """No published backup (or component) where one was asked for."""

    exit_code = EXIT_NOT_FOUND


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a backup, named so an operator can act on it."""

    path: str
    kind: str
    expected: str = ""
    actual: str = ""
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.path}: {self.kind}"
        if self.expected or self.actual:
            text += f": expected {self.expected or '-'}, actual {self.actual or '-'}"
        return f"{text} ({self.detail})" if self.detail else text


class VerificationError(BackupError):
    """The archive does not match its manifest and checksums; nothing was touched."""

    exit_code = EXIT_VERIFICATION_FAILED

    def __init__(self, archive: str, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"{archive} failed verification:\n{lines}")


class DecryptionError(VerificationError):
    """Wrong key or tampered ciphertext: authenticated encryption cannot tell the two apart."""


class UnsafeArchiveError(BackupError):
    """A member that could write outside the restore folder or was never backed up."""

    exit_code = EXIT_UNSAFE_ARCHIVE
    kind = "unsafe"

    def __init__(self, archive: str, problem: Problem) -> None:
        self.member = problem.path
        super().__init__(f"{archive}: refusing unsafe member {problem}")


class AbsolutePathError(UnsafeArchiveError):
    kind = "absolute-path"


class PathTraversalError(UnsafeArchiveError):
    kind = "path-traversal"


class SymlinkMemberError(UnsafeArchiveError):
    kind = "symlink"


class HardlinkMemberError(UnsafeArchiveError):
    kind = "hardlink"


class SpecialFileError(UnsafeArchiveError):
    kind = "special-file"


class UnlistedMemberError(UnsafeArchiveError):
    kind = "unlisted"


class DuplicateMemberError(UnsafeArchiveError):
    kind = "duplicate"


UNSAFE: dict[str, type[UnsafeArchiveError]] = {
    cls.kind: cls
    for cls in (
        AbsolutePathError,
        PathTraversalError,
        SymlinkMemberError,
        HardlinkMemberError,
        SpecialFileError,
        UnlistedMemberError,
        DuplicateMemberError,
    )
}
