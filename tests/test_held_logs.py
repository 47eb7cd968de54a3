"""unet.held_logs: INFO lines wait for the block's end; bad input drops them, warnings pass."""
import io
import logging

import pytest

from unet.errors import InputError
from unet.held_logs import held_info_lines


@pytest.fixture
def stream():
    """A handler on the root logger writing bare messages to a StringIO."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield out
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_info_lines_come_out_in_order_when_the_block_ends(stream):
    log = logging.getLogger("unet.test")
    with held_info_lines():
        log.info("checked")
        log.warning("kernel missing")
        assert stream.getvalue() == "WARNING kernel missing\n"    # warnings are not held
        log.debug("detail")
    assert stream.getvalue() == "WARNING kernel missing\nINFO checked\nDEBUG detail\n"
    log.info("after")
    assert stream.getvalue().endswith("INFO after\n")


@pytest.mark.parametrize("error", [InputError("bad mask"), ValueError("bad flag")])
def test_bad_input_drops_them(stream, error):
    with pytest.raises(type(error)):
        with held_info_lines():
            logging.getLogger("unet.test").info("checked")
            raise error
    assert stream.getvalue() == ""
    logging.getLogger("unet.test").info("later")       # the filter is gone
    assert stream.getvalue() == "INFO later\n"


@pytest.mark.parametrize("error", [RuntimeError("a bug"), KeyboardInterrupt()])
def test_other_exceptions_keep_them(stream, error):
    with pytest.raises(type(error)):
        with held_info_lines():
            logging.getLogger("unet.test").info("checked")
            raise error
    assert stream.getvalue() == "INFO checked\n"
