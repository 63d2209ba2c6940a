"""What a user of the ``gradq`` command reads when the service refuses: the command's
terms, not HTTP's."""

from __future__ import annotations

from api.cli.http import describe

UNAUTHORIZED = {
    "error": {
        "code": "unauthorized",
        "field": "Authorization",
        "message": "send 'Authorization: Bearer <key>'",
    }
}


def test_a_401_without_a_key_says_to_pass_one() -> None:
    text = describe(401, UNAUTHORIZED)
    assert text == "unauthorized: this service needs an API key; pass --key or set GRADQ_API_KEY"
    assert "Bearer" not in text and "HTTP" not in text


def test_a_401_with_a_key_says_it_was_refused() -> None:
    text = describe(401, UNAUTHORIZED, has_key=True)
    assert "the API key given was refused" in text and "--key or GRADQ_API_KEY" in text


def test_the_apis_hints_are_put_in_the_commands_terms() -> None:
    body = {
        "error": {
            "code": "invalid_spec",
            "field": "dataset.id",
            "message": "no uploaded data set 'x' (see GET /v1/datasets)",
        }
    }
    text = describe(422, body)
    assert "(see `gradq datasets list`)" in text and "GET /v1" not in text
    assert text.startswith("HTTP 422 invalid_spec at dataset.id")


def test_a_delete_of_a_running_job_says_which_command_cancels_it() -> None:
    body = {"error": {"code": "job_not_finished", "field": "status", "message":
            "job 1a2b-3c is running: cancel it first (POST /v1/jobs/1a2b-3c/cancel), "
            "then delete it"}}  # fmt: skip
    text = describe(409, body)
    assert "cancel it first (`gradq cancel 1a2b-3c`), then delete it" in text
    assert "POST" not in text
