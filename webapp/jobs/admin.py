from django.contrib import admin

from .models import Job, JobFile, Upload


class JobFileInline(admin.TabularInline):
    model = JobFile
    extra = 0
    readonly_fields = ("name", "content_type", "size", "file")


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "serving", "status", "progress", "model_version", "attempts", "worker", "queued_at", "finished_at")
    list_filter = ("serving", "status")
    search_fields = ("id", "input_summary", "error")
    readonly_fields = [f.name for f in Job._meta.fields]
    inlines = [JobFileInline]


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = ("id", "serving", "name", "format", "size", "created_at")
    list_filter = ("serving", "format")
