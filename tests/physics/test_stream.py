"""Fixed-size key blocks for the twin, cut from the pipeline's variable-size blocks."""

import pytest

from services.sdqkd.physics.analytical import LinkParams
from services.sdqkd.physics.attacks import AttackConfig
from services.sdqkd.physics.pipeline import block_size_for
from services.sdqkd.physics.stream import KeyStreamStalled, ProtocolKeyStream


def stream(**kw):
    params = LinkParams.from_mapping({"total_loss_db": 10.0})
    return ProtocolKeyStream(params, 65_536, pipeline_block_size=block_size_for(params, 80_000), seed=4, **kw)


def test_blocks_have_the_fixed_size_and_the_rate_is_the_achieved_one():
    s = stream(protocol_fraction=1.0)
    assert s.performance().secret_key_rate_bps == pytest.approx(2.319e6, rel=0.01)  # model until measured
    blocks = [s.next_block() for _ in range(3)]
    assert all(len(b.key) == 65_536 // 8 for b in blocks)
    assert len({b.key for b in blocks}) == 3
    assert blocks[-1].telemetry["mode"] == "protocol"
    rate = s.achieved_rate_bps()
    assert 0.3e6 < rate < 2.319e6  # finite-size and decoy overheads, below the asymptotic model
    assert s.performance().secret_key_rate_bps == rate
    assert s.seconds_per_block() == pytest.approx(65_536 / rate)


def test_attack_stalls_the_stream_and_clearing_it_restores_key():
    s = stream(protocol_fraction=1.0, max_consecutive_aborts=3)
    s.next_block()
    s.set_attack(AttackConfig(intercept_resend_fraction=1.0))
    with pytest.raises(KeyStreamStalled):
        for _ in range(20):  # whatever was buffered runs out, then no new key arrives
            s.next_block()
    assert s.performance().qber > 0.2
    assert s.seconds_per_block() == float("inf")
    s.set_attack(AttackConfig())
    assert len(s.next_block().key) == 8192


def test_invalid_block_size():
    with pytest.raises(ValueError):
        stream(protocol_fraction=1.0).__class__(LinkParams.from_mapping({}), 12)
