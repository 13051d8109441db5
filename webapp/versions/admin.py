"""The admin of model versions: every serving's versions, adding one, and the actions.

Adding stores the upload (an ONNX or safetensors file, or a .zip/.tar of a
Hugging Face folder), a Hub id at a pinned revision, or a folder on the
server into the model repository, and records its hashes. The change page of
a version has buttons for Validate, Activate, Canary (percent), Rollback and
Retire; the list has the same as admin actions. The audit log is read-only.
Everything needs staff with the model's permissions (the admin's own checks;
actions need "change").
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlservices
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect
from django.urls import path, reverse
from django.utils.html import format_html

from . import actions
from .models import ModelAction, ModelVersion

UPLOAD_SUFFIXES = (".onnx", ".safetensors", ".zip", ".tar", ".tar.gz", ".tgz")


class AddVersionForm(forms.ModelForm):
    """A new version and where its files come from: exactly one of upload, Hub id, server path."""

    serving = forms.ChoiceField(choices=())
    upload = forms.FileField(
        required=False, help_text="an ONNX or safetensors file, or a .zip / .tar.gz of a Hugging Face folder"
    )
    hub_id = forms.CharField(required=False, label="Hub id", help_text="e.g. distilbert/distilbert-base-uncased-finetuned-sst-2-english")
    revision = forms.CharField(required=False, help_text="the 40-hex commit of the Hub id (required with it)")
    local_path = forms.CharField(required=False, label="Path on the server", help_text="a folder or file the server can read")

    class Meta:
        model = ModelVersion
        fields = ["serving", "version"]

    who = actions.Who()  # set per request by ModelVersionAdmin.get_form

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["serving"].choices = [(n, n) for n in mlservices.names()]

    def clean(self):
        data = super().clean()
        serving, version = data.get("serving"), data.get("version")
        given = [k for k in ("upload", "hub_id", "local_path") if data.get(k)]
        if len(given) != 1:
            raise forms.ValidationError("give exactly one of: a file to upload, a Hub id with its revision, a path on the server")
        if self.errors or not serving or not version:
            return data
        try:
            if data.get("upload"):
                self.instance = self.store_upload(serving, version, data["upload"])
            elif data.get("hub_id"):
                self.instance = actions.pull(serving, data["hub_id"].strip(), data.get("revision", "").strip(), version, self.who)
            else:
                self.instance = actions.import_path(serving, version, data["local_path"].strip(), self.who)
        except actions.VersionError as exc:
            raise forms.ValidationError(str(exc)) from None
        return data

    def validate_unique(self):
        pass  # the version was stored (and its row created) by clean()

    def store_upload(self, serving: str, version: str, upload) -> ModelVersion:
        name = Path(upload.name).name
        if not name.lower().endswith(UPLOAD_SUFFIXES):
            raise actions.VersionError(f"{name}: upload a file ending in {', '.join(UPLOAD_SUFFIXES)}")
        with tempfile.TemporaryDirectory(prefix="upload-") as folder:
            local = Path(folder) / name
            with open(local, "wb") as f:
                for chunk in upload.chunks():
                    f.write(chunk)
            return actions.import_path(serving, version, local, self.who, source={"kind": "upload", "name": name})


class VersionActionForm(ActionForm):
    percent = forms.IntegerField(required=False, min_value=1, max_value=99, label="canary %")


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = (
        "serving", "version", "status", "canary_percent", "sha256_short", "size", "source_text", "added_by",
        "created_at", "figures",
    )
    list_display_links = ("serving", "version")
    list_filter = ("serving", "status")
    search_fields = ("serving", "version")
    readonly_fields = (
        "serving", "version", "status", "canary_percent", "source", "sha256", "size", "added_by", "created_at",
        "validated_at", "figures", "validation",
    )
    action_form = VersionActionForm
    actions = ["validate_selected", "activate_selected", "canary_selected", "rollback_selected", "retire_selected"]

    @admin.display(description="sha256")
    def sha256_short(self, obj):
        return obj.sha256_short()

    @admin.display(description="source")
    def source_text(self, obj):
        source = obj.source or {}
        kind = source.get("kind", "")
        detail = {"hub": f"{source.get('ref')}@{str(source.get('revision', ''))[:7]}"}.get(kind) or source.get("name") or source.get("path") or ""
        return f"{kind}: {detail}" if detail else kind

    @admin.display(description="validation")
    def figures(self, obj):
        return obj.figures()

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = type("AddVersionForm", (AddVersionForm,), {"who": actions.Who.of(request.user)})
            kwargs["fields"] = ["serving", "version", "upload", "hub_id", "revision", "local_path"]
        return super().get_form(request, obj, change, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj is not None else ()

    def has_delete_permission(self, request, obj=None):
        return False  # retire instead: the audit log and rollback refer to versions

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
        # an added version was stored and recorded by the form (actions.import_path / pull)

    def log_addition(self, request, obj, message):
        return None  # the versions' own audit log (ModelAction) has it

    # --- the actions: buttons on the change page ---------------------------------

    def get_urls(self):
        own = [path("<int:pk>/act/", self.admin_site.admin_view(self.act_view), name="versions_modelversion_act")]
        return own + super().get_urls()

    def act_view(self, request, pk):
        row = get_object_or_404(ModelVersion, pk=pk)
        if request.method != "POST" or not self.has_change_permission(request, row):
            raise PermissionDenied
        percent = request.POST.get("percent") or None
        try:
            percent = int(percent) if percent is not None else None
        except ValueError:
            percent = -1
        self.act(request, row, request.POST.get("do", ""), percent)
        return redirect(reverse("admin:versions_modelversion_change", args=[row.pk]))

    def act(self, request, row: ModelVersion, do: str, percent: int | None = None) -> None:
        who = actions.Who.of(request.user)
        try:
            if do == "validate":
                actions.request_validation(row.serving, row.version, who)
                message = f"{row.serving} {row.version}: validation started; reload to see its figures"
            elif do == "activate":
                actions.activate(row.serving, row.version, who)
                message = f"{row.serving} {row.version} is active; the servers switch to it within seconds"
            elif do == "canary":
                actions.activate(row.serving, row.version, who, canary=percent if percent is not None else -1)
                message = f"{row.serving} {row.version} gets {percent} % of the requests (canary)"
            elif do == "rollback":
                back = actions.rollback(row.serving, who)
                message = (f"{row.serving}: {back.version} is active again" if back.status == ModelVersion.Status.ACTIVE
                           else f"{row.serving}: canary {back.version} dropped")
            elif do == "retire":
                actions.retire(row.serving, row.version, who)
                message = f"{row.serving} {row.version} retired"
            else:
                raise actions.VersionError(f"unknown action {do!r}; use validate, activate, canary, rollback or retire")
        except actions.VersionError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(request, message, messages.SUCCESS)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "act_url": reverse("admin:versions_modelversion_act", args=[object_id])}
        return super().change_view(request, object_id, form_url, extra_context)

    def changelist_view(self, request, extra_context=None):
        serving = {}
        for row in ModelVersion.objects.filter(status__in=(ModelVersion.Status.ACTIVE, ModelVersion.Status.CANARY)):
            serving.setdefault(row.serving, []).append(row)
        summary = [
            (name, ", ".join(
                f"{r.version} ({'active' if r.status == 'active' else f'canary {r.canary_percent} %'})" for r in serving.get(name, [])
            ) or "the settings' model")
            for name in mlservices.names()
        ]
        return super().changelist_view(request, {**(extra_context or {}), "servings_summary": summary})

    # --- the same as admin actions on the list -----------------------------------------

    def _each(self, request, queryset, do, percent=None):
        if not self.has_change_permission(request):
            raise PermissionDenied
        for row in queryset:
            self.act(request, row, do, percent)

    @admin.action(description="Validate the selected versions")
    def validate_selected(self, request, queryset):
        self._each(request, queryset, "validate")

    @admin.action(description="Activate the selected version")
    def activate_selected(self, request, queryset):
        self._each(request, queryset, "activate")

    @admin.action(description="Canary: send the canary %% of requests to the selected version")
    def canary_selected(self, request, queryset):
        percent = request.POST.get("percent")
        self._each(request, queryset, "canary", int(percent) if percent and percent.isdigit() else None)

    @admin.action(description="Roll back the servings of the selected versions")
    def rollback_selected(self, request, queryset):
        for serving in sorted({row.serving for row in queryset}):
            self._each(request, queryset.filter(serving=serving)[:1], "rollback")

    @admin.action(description="Retire the selected versions")
    def retire_selected(self, request, queryset):
        self._each(request, queryset, "retire")


@admin.register(ModelAction)
class ModelActionAdmin(admin.ModelAdmin):
    """The audit log: who did what to which version, when. Read-only."""

    list_display = ("at", "username", "action", "serving", "version", "detail_text")
    list_filter = ("serving", "action")
    search_fields = ("username", "serving", "version")
    readonly_fields = ("at", "user", "username", "action", "serving", "version", "detail")

    @admin.display(description="detail")
    def detail_text(self, obj):
        return format_html("<code>{}</code>", ", ".join(f"{k}={v}" for k, v in (obj.detail or {}).items()))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
