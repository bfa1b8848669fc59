"""Who may call what: the minimum role of every RPC, and whether it mutates (and so is audited).

The interceptor consults this table before any handler runs. A method missing from it is refused
(fail closed), and a test checks that every method of every service is listed.
"""

from __future__ import annotations

from dataclasses import dataclass

from deeplens_server.auth import Role


@dataclass(frozen=True, slots=True)
class MethodPolicy:
    role: Role
    mutating: bool


_V, _U, _E, _A, _P = Role.VIEWER, Role.UPLOADER, Role.EDITOR, Role.TENANT_ADMIN, Role.PLATFORM_ADMIN

POLICIES: dict[str, MethodPolicy] = {
    "/deeplens.v1.SearchService/SearchImages": MethodPolicy(_V, False),
    "/deeplens.v1.SearchService/GetImageThumbnail": MethodPolicy(_V, False),
    "/deeplens.v1.SearchService/GetImage": MethodPolicy(_V, False),
    "/deeplens.v1.SearchService/ListImages": MethodPolicy(_V, False),
    "/deeplens.v1.SearchService/DeleteImage": MethodPolicy(_E, True),
    "/deeplens.v1.SearchService/FindDuplicates": MethodPolicy(_V, False),
    "/deeplens.v1.SearchService/ListDuplicateGroups": MethodPolicy(_V, False),
    "/deeplens.v1.SearchService/GetDuplicateGroup": MethodPolicy(_V, False),
    "/deeplens.v1.SearchService/ResolveDuplicateGroup": MethodPolicy(_E, True),
    "/deeplens.v1.SearchService/GetStorageReport": MethodPolicy(_V, False),
    "/deeplens.v1.IngestService/IngestImage": MethodPolicy(_U, True),
    "/deeplens.v1.IngestService/WatchOperation": MethodPolicy(_V, False),
    "/deeplens.v1.IngestService/UploadImages": MethodPolicy(_U, True),
    "/deeplens.v1.IngestService/ScanStorageLocation": MethodPolicy(_U, True),
    "/deeplens.v1.IngestService/WatchOperations": MethodPolicy(_V, False),
    "/deeplens.v1.IngestService/ListOperationFailures": MethodPolicy(_V, False),
    "/deeplens.v1.IngestService/PauseOperation": MethodPolicy(_U, True),
    "/deeplens.v1.IngestService/RetryDeadLetters": MethodPolicy(_U, True),
    "/deeplens.v1.IngestService/ResumeOperation": MethodPolicy(_U, True),
    "/google.longrunning.Operations/GetOperation": MethodPolicy(_V, False),
    "/google.longrunning.Operations/ListOperations": MethodPolicy(_V, False),
    "/google.longrunning.Operations/WaitOperation": MethodPolicy(_V, False),
    "/google.longrunning.Operations/CancelOperation": MethodPolicy(_U, True),
    "/google.longrunning.Operations/DeleteOperation": MethodPolicy(_U, True),
    "/deeplens.v1.AdminService/CreateTenant": MethodPolicy(_P, True),
    "/deeplens.v1.AdminService/GetTenant": MethodPolicy(_V, False),
    "/deeplens.v1.AdminService/ListTenants": MethodPolicy(_P, False),
    "/deeplens.v1.AdminService/UpdateTenant": MethodPolicy(_P, True),
    "/deeplens.v1.AdminService/DeleteTenant": MethodPolicy(_P, True),
    "/deeplens.v1.AdminService/GetTenantStats": MethodPolicy(_V, False),
    "/deeplens.v1.AdminService/GetSystemHealth": MethodPolicy(_P, False),
    "/deeplens.v1.AdminService/ListModels": MethodPolicy(_V, False),
    "/deeplens.v1.AdminService/ReindexTenant": MethodPolicy(_A, True),
    "/deeplens.v1.AdminService/BatchReindexTenants": MethodPolicy(_P, True),
    "/deeplens.v1.AdminService/CreateCollection": MethodPolicy(_E, True),
    "/deeplens.v1.AdminService/GetCollection": MethodPolicy(_V, False),
    "/deeplens.v1.AdminService/ListCollections": MethodPolicy(_V, False),
    "/deeplens.v1.AdminService/DeleteCollection": MethodPolicy(_E, True),
    "/deeplens.v1.AdminService/CreateApiKey": MethodPolicy(_A, True),
    "/deeplens.v1.AdminService/ListApiKeys": MethodPolicy(_A, False),
    "/deeplens.v1.AdminService/RevokeApiKey": MethodPolicy(_A, True),
    "/deeplens.v1.AdminService/CreateStorageLocation": MethodPolicy(_A, True),
    "/deeplens.v1.AdminService/GetStorageLocation": MethodPolicy(_A, False),
    "/deeplens.v1.AdminService/ListStorageLocations": MethodPolicy(_A, False),
    "/deeplens.v1.AdminService/UpdateStorageLocation": MethodPolicy(_A, True),
    "/deeplens.v1.AdminService/DeleteStorageLocation": MethodPolicy(_A, True),
    "/deeplens.v1.AdminService/TestStorageLocation": MethodPolicy(_A, False),
    "/deeplens.v1.AdminService/ListAuditEvents": MethodPolicy(_A, False),
}
