"""Alert rules: the running set, a check of a rule file without loading it, a reload."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, Query

from gateway.api.auth import Role, require
from gateway.api.context import Caller, Ctx
from gateway.api.models import AUTH_ERRORS, ReloadOut, RuleCheckOut, RuleOut, error_responses
from gateway.errors import ConfigError
from gateway.rules.rule import load_rules
from gateway.textfile import yaml_files

router = APIRouter(prefix="/api/v1/rules", tags=["rules"], responses=AUTH_ERRORS)
INVALID = error_responses(422, e422="the rules do not load: file, rule, field")
MAX_RULE_FILE_BYTES = 256 * 1024


@router.get("", response_model=list[RuleOut], summary="The rules running now")
async def list_rules(ctx: Ctx, principal: Caller) -> list[RuleOut]:
    require(principal, Role.ADMIN, Role.OPERATOR)
    return [
        RuleOut(name=r.name, title=r.spec.title, kind=r.spec.kind, severity=str(r.spec.severity),
                life_safety=r.spec.life_safety, device_types=list(r.spec.device_types),
                file=r.source)
        for r in ctx.gateway.loaded_rules
    ]  # fmt: skip


@router.post(
    "/check", response_model=RuleCheckOut, responses=INVALID,
    summary="Check a rule file (YAML) as if it were in the rule folder, without loading it",
)  # fmt: skip
async def check_rules(
    ctx: Ctx,
    principal: Caller,
    text: Annotated[str, Body(media_type="application/yaml", max_length=MAX_RULE_FILE_BYTES)],
    file: Annotated[str, Query(pattern=r"^[A-Za-z0-9_-]{1,64}\.ya?ml$")] = "new.yaml",
) -> RuleCheckOut:
    require(principal, Role.ADMIN)
    folder = ctx.gateway.config.rules_dir
    with tempfile.TemporaryDirectory(prefix="rules-check-") as scratch:
        trial = Path(scratch)
        # The other files come along, so that a name used twice across files is found too.
        for path in yaml_files(folder):
            if path.name != file:
                shutil.copy(path, trial / path.name)
        (trial / file).write_text(text, encoding="utf-8")
        try:
            rules = load_rules(trial, ctx.gateway.profiles)
        except ConfigError as exc:
            # The error names the trial copy; say the file's name as the caller knows it.
            raise ConfigError(
                re.sub(r"^.*/", "", exc.file) if exc.file.startswith(scratch) else exc.file,
                exc.field,
                exc.problem,
            ) from exc
    return RuleCheckOut(file=file, rules=[r.name for r in rules if r.source == file])


@router.post(
    "/reload", response_model=ReloadOut, responses=INVALID,
    summary="Load the rule folder again; a broken file leaves the running rules untouched",
)  # fmt: skip
async def reload_rules(ctx: Ctx, principal: Caller) -> ReloadOut:
    require(principal, Role.ADMIN)
    # A broken file: the caller gets its file and field, and the running rules stay.
    ctx.gateway.reload_rules()
    return ReloadOut(rules=len(ctx.gateway.loaded_rules))
