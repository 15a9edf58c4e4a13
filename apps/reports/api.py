"""DRF API for exports (start a background job, poll it, download its CSV) and usage imports.

Exports are reads: each job belongs to the person who asked and covers what they may see when it
runs. An import books spend to a project: owners, and team leads on their team's projects.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse, Http404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.reports import services
from apps.reports.forms import MAX_IMPORT_BYTES, ExportQueryForm
from apps.reports.models import ExportJob, ExportKind, ExportStatus
from apps.reports.selectors import GROUPINGS, visible_projects
from apps.tenancy.drf import VisibleRelated, request_user
from apps.tenancy.models import Organization, Project
from apps.tenancy.permissions import Action, require
from costcontrol.api import form_errors
from costcontrol.api_parsers import FormParser, MultiPartParser


class ExportJobSerializer(serializers.ModelSerializer):
    organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    percent = serializers.IntegerField(read_only=True)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = ExportJob
        fields = ["id", "kind", "organization", "params", "status", "rows_written", "rows_total", "percent",
                  "error", "created_at", "started_at", "finished_at", "download_url"]  # fmt: skip
        read_only_fields = fields

    def get_download_url(self, job: ExportJob) -> str | None:
        return reverse("api-export-download", kwargs={"pk": job.pk}) if job.status == ExportStatus.DONE else None


class ExportRequestSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=ExportKind.choices)
    organization = VisibleRelated(slug_field="slug", queryset=Organization.objects.all())
    since = serializers.CharField(required=False, max_length=40, help_text="ISO date or datetime; default: this month")
    until = serializers.CharField(required=False, max_length=40, help_text="Exclusive; default: next month")
    project = serializers.SlugField(required=False, allow_blank=True, help_text="Project slug; default: all")
    group_by = serializers.CharField(
        required=False, max_length=200, help_text=f"Roll-ups: comma-separated {', '.join(GROUPINGS)}"
    )
    bucket = serializers.CharField(required=False, max_length=10, help_text="Roll-ups: hour, day or month")


def _own_jobs(request: Request) -> QuerySet[ExportJob]:
    return ExportJob.objects.filter(requested_by=request_user(request)).select_related("organization")


class ExportList(generics.ListAPIView):
    """The caller's export jobs, newest first; ``POST`` starts one (202: poll it, then download)."""

    serializer_class = ExportJobSerializer

    def get_queryset(self) -> QuerySet[ExportJob]:
        return _own_jobs(self.request).order_by("-created_at", "-id")

    @extend_schema(request=ExportRequestSerializer, responses={202: ExportJobSerializer})
    def post(self, request: Request) -> Response:
        payload = ExportRequestSerializer(data=request.data, context=self.get_serializer_context())
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        organization: Organization = data["organization"]
        form = ExportQueryForm({**{k: v for k, v in data.items() if k not in ("kind", "organization")},
                                "org": organization.slug})  # fmt: skip
        if not form.is_valid():
            raise form_errors(form)
        query = form.to_query()
        if (
            query.project
            and not visible_projects(user=request.user, organization=organization, project_slug=query.project).exists()
        ):
            raise ValidationError({"project": "No such project among those you see in this organisation."})
        job = services.export_job_create(
            user=request_user(request), organization=organization, kind=data["kind"], query=query
        )
        return Response(ExportJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class ExportDetail(generics.RetrieveAPIView):
    """One of the caller's export jobs: its status and progress, and where to download it when done."""

    serializer_class = ExportJobSerializer

    def get_queryset(self) -> QuerySet[ExportJob]:
        return _own_jobs(self.request)


class _FileOrJson(BaseContentNegotiation):
    """The download answers a file whatever the Accept header; errors are JSON like everywhere else."""

    def select_parser(self, request: Request, parsers: Any) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Request, renderers: Any, format_suffix: str | None = None) -> Any:
        return renderers[0], renderers[0].media_type


class ExportDownload(APIView):
    content_negotiation_class = _FileOrJson

    @extend_schema(responses={(200, "text/csv"): OpenApiTypes.BINARY})
    def get(self, request: Request, pk: int) -> FileResponse:
        job = generics.get_object_or_404(_own_jobs(request), pk=pk)
        path = services.export_job_path(job) if job.status == ExportStatus.DONE else None
        if path is None or not path.is_file():
            raise Http404("The export is not ready (or no longer kept).")
        return FileResponse(path.open("rb"), as_attachment=True, filename=path.name, content_type="text/csv")


class ImportRequestSerializer(serializers.Serializer):
    organization = VisibleRelated(slug_field="slug", queryset=Organization.objects.all())
    project = VisibleRelated(slug_field="slug", queryset=Project.objects.all(), help_text="Spend is booked here")
    file = serializers.FileField(help_text="CSV exported from OpenAI's usage page (activity or cost view), or the API")

    def validate_file(self, upload: Any) -> Any:
        if upload.size > MAX_IMPORT_BYTES:
            raise ValidationError(f"The file is larger than {MAX_IMPORT_BYTES // (1024 * 1024)} MB; split it.")
        return upload


class ImportResultSerializer(serializers.Serializer):
    format = serializers.CharField()
    rows = serializers.IntegerField()
    created = serializers.IntegerField()
    replaced = serializers.IntegerField(help_text="Rows an earlier import had written for the same buckets")
    cost = serializers.DecimalField(max_digits=30, decimal_places=12)
    earliest = serializers.DateTimeField()


class UsageImport(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(request=ImportRequestSerializer, responses={201: ImportResultSerializer})
    def post(self, request: Request) -> Response:
        """Import an OpenAI usage or cost CSV into a project's ledger: every row, or none (400, by line)."""
        payload = ImportRequestSerializer(data=request.data, context={"request": request})
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        project: Project = data["project"]
        if project.organization_id != data["organization"].pk:
            raise ValidationError({"project": "Pick a project of the chosen organisation."})
        require(request.user, Action.USAGE_IMPORT, project)
        upload = data["file"]
        try:
            result = services.usage_import(
                organization=data["organization"], project=project, content=upload.read(), file_name=upload.name
            )
        except services.ImportRejected as exc:
            raise ValidationError({"file": [f"line {p.line}: {p.message}" for p in exc.errors]}) from None
        return Response(ImportResultSerializer(result).data, status=status.HTTP_201_CREATED)
