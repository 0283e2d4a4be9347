"""Password hashing with Argon2id (RFC 9106), off the event loop.

Argon2 is deliberately slow and memory-hard, so hashing runs in a thread pool
(argon2-cffi releases the GIL). Unknown accounts are checked against a dummy hash
so that a login's timing does not tell whether the account exists.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from relay.errors import BadRequest


class Passwords:
    """Hash and check passwords with the configured Argon2id cost."""

    def __init__(
        self,
        *,
        time_cost: int,
        memory_kib: int,
        parallelism: int,
        min_length: int,
        executor: Executor | None = None,
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )
        self.min_length = min_length
        self._executor = executor
        self._dummy_hash = self._hasher.hash("relais-sante-dummy-password")

    def check_strength(self, password: str) -> None:
        """Refuse passwords too short to resist guessing (the length is what matters most)."""
        if len(password) < self.min_length:
            raise BadRequest(
                f"Le mot de passe doit comporter au moins {self.min_length} caractères.",
                code="weak_password",
            )

    def hash_sync(self, password: str) -> str:
        """Argon2id hash (PHC string); blocking — for the CLI."""
        return self._hasher.hash(password)

    async def hash(self, password: str) -> str:
        """Argon2id hash computed in the thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._hasher.hash, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored or self._dummy_hash, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, stored: str | None, password: str) -> bool:
        """True when ``password`` matches ``stored``; ``None`` (unknown account) never matches."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._verify, stored, password)
