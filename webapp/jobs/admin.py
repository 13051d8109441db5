from django.contrib import admin

from .models import Job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "serving", "status", "model_version", "attempts", "queued_at", "finished_at")
    list_filter = ("serving", "status")
    search_fields = ("id", "input_summary", "model_version")
    readonly_fields = [f.name for f in Job._meta.fields]
