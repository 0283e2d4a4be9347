import base64

from relay import totp
from relay.ratelimit import FailureLimiter

# RFC 6238 Appendix B test vectors (SHA-1 seed "12345678901234567890", 8 digits).
RFC6238_SECRET = base64.b32encode(b"12345678901234567890").decode()
RFC6238_VECTORS = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]


def test_rfc6238_vectors() -> None:
    for now, expected in RFC6238_VECTORS:
        assert totp.totp(RFC6238_SECRET, now, digits=8) == expected


def test_verify_accepts_adjacent_steps_and_refuses_replay() -> None:
    secret = totp.new_secret()
    now = 1_800_000_000.0
    code = totp.totp(secret, now - 30)
    step = totp.verify(secret, code, now)
    assert step == int((now - 30) // 30)
    assert totp.verify(secret, code, now, last_used_step=step) == -1
    assert totp.verify(secret, totp.totp(secret, now - 90), now) == -1
    assert totp.verify(secret, "12345", now) == -1
    assert totp.verify(secret, "abcdef", now) == -1


def test_provisioning_uri_names_issuer() -> None:
    uri = totp.provisioning_uri("ABC", "ide@relais.localhost", "Relais Santé")
    assert uri.startswith("otpauth://totp/Relais%20Sant%C3%A9%3Aide%40relais.localhost?secret=ABC")


def test_limiter_blocks_after_max_failures_and_recovers() -> None:
    limiter = FailureLimiter(window_seconds=60, max_failures=3)
    for t in (0.0, 1.0, 2.0):
        assert limiter.retry_after("k", t) == 0
        limiter.record_failure("k", t)
    assert limiter.retry_after("k", 3.0) == 57
    assert limiter.retry_after("other", 3.0) == 0
    assert limiter.retry_after("k", 60.5) == 0  # first failure left the window
    limiter.reset("k")
    assert limiter.retry_after("k", 3.0) == 0


def test_limiter_sweep_bounds_memory() -> None:
    limiter = FailureLimiter(window_seconds=10, max_failures=5)
    for i in range(1000):
        limiter.record_failure(f"address:{i}", 0.0)
    limiter.sweep(20.0)
    assert limiter._failures == {}
