"""Log lines without identifiers: the hashes a refusal's message gets, and the filter on every handler."""

import logging

from covidnet.monitor.predlog import hash_id
from covidnet.serve.redact import UID_PATTERN, RedactingFilter, redact, redact_uids
from covidnet.serve.study import ServeInputError

KEY = b"redact-test-key"
UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


def test_private_identifiers_become_the_prediction_logs_hashes():
    exc = ServeInputError(f"zip: study {UID} has no usable CT series (member 'DOE^JANE/IM1')", "study.no_usable_series",
                          {"study": [UID], "member": ["DOE^JANE/IM1"]})
    text = exc.log_text(KEY)
    assert UID not in text and "DOE" not in text
    assert f"<study:{hash_id(KEY, 'study', UID)[:16]}>" in text  # matches the log's study_hash by prefix
    assert str(exc).count(UID) == 1  # the client's message is unchanged
    assert redact(repr("DOE\\JANE"), {"member": ["DOE\\JANE"]}, KEY).count("<member:") == 1  # its repr form too


def test_uid_shapes_only():
    for text in (UID, "2.25.123456789012345678901234567890", "1.2.3.4.5.6"):
        assert UID_PATTERN.fullmatch(text), text
    for text in ("127.0.0.1", "10.0.0.12", "kserve 0.21.0", "3.11.7", "x1.2.3.4.5.6", "v1.2.840.10008.1.2"):
        assert redact_uids(text, KEY) == text, text


def test_filter_hashes_messages_arguments_and_tracebacks():
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(RedactingFilter(KEY))
    logger = logging.getLogger("covidnet.test_redact")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.warning("series %s refused for %s", UID, "client 127.0.0.1")
        logger.warning(f"inline {UID}")
        try:
            raise ValueError(f"bad series {UID}")
        except ValueError:
            logger.exception("failed")
        # uvicorn's access log: a 5-tuple its formatter unpacks, with an int status
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "POST", f"/x?uid={UID}", "1.1", 400)
    finally:
        logger.removeHandler(handler)
    joined = "\n".join(records)
    assert UID not in joined and joined.count("<uid:") == 4, joined
    assert "127.0.0.1" in joined and '" 400' in joined and "ValueError: bad series <uid:" in joined
