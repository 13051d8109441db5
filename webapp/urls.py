from django.contrib import admin
from django.urls import path

from webapp.jobs import api, pages, schema_views
from webapp.metrics.views import metrics
from webapp.status.views import status_page

urlpatterns = [
    path("", pages.home, name="home"),
    path("s/<str:serving>/", pages.serving_page, name="serving-page"),
    path("api/jobs", api.jobs, name="api-jobs"),
    path("api/jobs/<uuid:job_id>", api.job_detail, name="api-job"),
    path("api/jobs/<uuid:job_id>/files/<str:name>", api.job_file, name="api-job-file"),
    path("api/uploads", api.upload, name="api-uploads"),
    path("api/servings", api.servings, name="api-servings"),
    path("api/schema/", schema_views.schema, name="api-schema"),
    path("api/docs/", schema_views.docs, name="api-docs"),
    path("metrics", metrics, name="metrics"),
    path("status/", status_page, name="status"),
    path("admin/", admin.site.urls),
]
