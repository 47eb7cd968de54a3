"""unet.core.held_logs: INFO lines wait for the block's end; bad input drops them, warnings pass."""
import io
import logging

import pytest

from unet.core.errors import InputError
from unet.core.held_logs import held_info_lines


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


def test_release_emits_what_was_held_and_stops_holding(stream):
    log = logging.getLogger("unet.test")
    with pytest.raises(InputError):
        with held_info_lines() as checks_passed:
            log.info("checked")
            checks_passed()
            assert stream.getvalue() == "INFO checked\n"
            log.info("building")
            assert stream.getvalue() == "INFO checked\nINFO building\n"
            raise InputError("after the checks")
    assert stream.getvalue() == "INFO checked\nINFO building\n"


def test_a_process_forked_in_the_block_holds_nothing(tmp_path):
    import os
    path = tmp_path / "child.log"
    handler = logging.FileHandler(path)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with held_info_lines():
            pid = os.fork()
            if pid == 0:                    # a data-loader worker, say
                logging.getLogger("unet.test").info("from the child")
                handler.flush()
                os._exit(0)
            os.waitpid(pid, 0)
            assert path.read_text() == "from the child\n"
            logging.getLogger("unet.test").info("from the parent")
            assert path.read_text() == "from the child\n"
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    assert path.read_text() == "from the child\nfrom the parent\n"
