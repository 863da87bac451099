"""De-identification of DICOM headers by the DICOM PS3.15 Annex E Basic Application Level
Confidentiality Profile (Table E.1-1), with the Retain UIDs Option.

`BASIC_PROFILE` is the profile's table as data: attribute keyword -> action. Actions:

* ``X`` remove the attribute;
* ``Z`` replace it by an empty value (attributes the DICOM SEG must carry, Type 2);
* ``D`` replace it by a dummy value (the patient ID: a pseudonym of the study, see below);
* ``U`` UIDs: kept (Retain UIDs Option, code 113110): a SEG must reference its source instance by
  its study, series, SOP instance and frame of reference UIDs, so the SEG is only usable beside
  the (identified) source anyway; the UIDs of the profile are listed so the choice is explicit.

Private attributes are removed. The profile's attributes that are sequences of references to the
source (Referenced Series / Image, Source Image sequences) hold only UIDs and are kept for the
same reason. The table is applied at every nesting level.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pydicom.dataset import Dataset

PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
RETAIN_UIDS_CODE = ("113110", "DCM", "Retain UIDs Option")
# Two values: LO holds at most 64 characters each.
METHOD = ["DICOM PS3.15 Basic Application Confidentiality Profile", "Retain UIDs Option"]

_REMOVE = """
AccessionNumber:Z AcquisitionComments AcquisitionContextSequence AcquisitionDate AcquisitionDateTime
AcquisitionDeviceProcessingDescription AcquisitionFieldOfViewLabel AcquisitionProtocolDescription
AcquisitionTime ActualHumanPerformersSequence AdditionalPatientHistory AdmissionID AdmittingDate
AdmittingDiagnosesCodeSequence AdmittingDiagnosesDescription AdmittingTime Allergies
AlternateContainerIdentifierSequence ApprovalStatusDateTime Arbitrary AttributeModificationDateTime
AuthorObserverSequence BranchOfService BreedRegistrationSequence CassetteID
ClinicalTrialCoordinatingCenterName ClinicalTrialProtocolEthicsCommitteeApprovalNumber
ClinicalTrialProtocolEthicsCommitteeName ClinicalTrialProtocolID ClinicalTrialProtocolName
ClinicalTrialSeriesDescription ClinicalTrialSeriesID ClinicalTrialSiteID ClinicalTrialSiteName
ClinicalTrialSponsorName ClinicalTrialSubjectID ClinicalTrialSubjectReadingID
ClinicalTrialTimePointDescription ClinicalTrialTimePointID CommentsOnThePerformedProcedureStep
ConfidentialityConstraintOnPatientDataDescription ConsultingPhysicianIdentificationSequence
ConsultingPhysicianName ContainerDescription ContainerIdentifier ContentCreatorIdentificationCodeSequence
ContentCreatorName:Z ContentDate ContentDescription ContentQualification ContentSequence ContentTime
ContrastBolusAgent ContributionDateTime ContributionDescription CountryOfResidence CurrentPatientLocation
CurveDate CurveTime CustodialOrganizationSequence DataSetTrailingPadding Date DateOfLastCalibration
DateOfLastDetectorCalibration DateOfSecondaryCapture DateTime DecayCorrectionDateTime DerivationDescription
DestinationAE DetectorID DetectorManufacturerModelName DetectorManufacturerName DeviceAlternateIdentifier
DeviceDescription DeviceLabel DeviceSerialNumber DigitalSignaturesSequence DischargeDate
DischargeDiagnosisCodeSequence DischargeDiagnosisDescription DischargeTime DistributionAddress
DistributionName DoseReferenceDescription EndAcquisitionDateTime EntityDescription EntityLabel EntityName
EthnicGroup ExpectedCompletionDateTime FailedSOPInstanceUIDList FillerOrderNumberImagingServiceRequest
FirstTreatmentDate FrameComments FrameOriginTimestamp GantryID GeneratorID GraphicAnnotationSequence
HangingProtocolCreationDateTime HumanPerformerName HumanPerformerOrganization IconImageSequence
IdentifyingComments ImageComments ImagePresentationComments ImagingServiceRequestComments Impressions
InstanceCreationDate InstanceCreationTime InstitutionAddress InstitutionCodeSequence InstitutionName
InstitutionalDepartmentName InstitutionalDepartmentTypeCodeSequence InsurancePlanIdentification
IntendedRecipientsOfResultsIdentificationSequence InterlockDateTime InterpretationApproverSequence
InterpretationAuthor InterpretationDiagnosisDescription InterpretationIDIssuer InterpretationRecorder
InterpretationText InterpretationTranscriber IssuerOfAdmissionID IssuerOfPatientID IssuerOfServiceEpisodeID
LabelText LastMenstrualDate LongDeviceDescription MAC MedicalAlerts MedicalRecordLocator MilitaryRank
ModifiedAttributesSequence ModifiedImageDescription ModifyingDeviceID MostRecentTreatmentDate
NameOfPhysiciansReadingStudy NamesOfIntendedRecipientsOfResults NetworkID ObservationDateTime Occupation
OperatorIdentificationSequence OperatorsName OrderCallbackPhoneNumber OrderCallbackTelecomInformation
OrderEnteredBy OrderEntererLocation OriginalAttributesSequence OriginalImageIdentification
OriginalImageIdentificationNomenclature OtherPatientIDs OtherPatientIDsSequence OtherPatientNames OverlayDate
OverlayTime ParticipantSequence PatientAddress PatientAge PatientAlternativeCalendar PatientBirthDate:Z
PatientBirthDateInAlternativeCalendar PatientBirthName PatientBirthTime PatientBreedCodeSequence
PatientBreedDescription PatientComments PatientDeathDateInAlternativeCalendar PatientID:D
PatientInstitutionResidence PatientInsurancePlanCodeSequence PatientMotherBirthName PatientName:Z
PatientPrimaryLanguageCodeSequence PatientPrimaryLanguageModifierCodeSequence PatientReligiousPreference
PatientSex:Z PatientSexNeutered PatientSize PatientSpeciesDescription PatientState PatientTelecomInformation
PatientTelephoneNumbers PatientTransportArrangements PatientWeight PerformedLocation
PerformedProcedureStepDescription PerformedProcedureStepEndDate PerformedProcedureStepEndDateTime
PerformedProcedureStepEndTime PerformedProcedureStepID PerformedProcedureStepStartDate
PerformedProcedureStepStartDateTime PerformedProcedureStepStartTime PerformedStationAETitle
PerformedStationGeographicLocationCodeSequence PerformedStationName PerformedStationNameCodeSequence
PerformingPhysicianIdentificationSequence PerformingPhysicianName PersonAddress
PersonIdentificationCodeSequence PersonName PersonTelecomInformation PersonTelephoneNumbers
PhysicianApprovingInterpretation PhysiciansOfRecord PhysiciansOfRecordIdentificationSequence
PhysiciansReadingStudyIdentificationSequence PlacerOrderNumberImagingServiceRequest PlateID PreMedication
PregnancyStatus ProcedureStepLabel ProductExpirationDateTime ProtocolName RadiopharmaceuticalStartDateTime
RadiopharmaceuticalStopDateTime ReasonForStudy ReasonForTheImagingServiceRequest
ReceivingApplicationEntityTitle ReferencedDigitalSignatureSequence ReferencedPatientAliasSequence
ReferencedPatientPhotoSequence ReferencedPatientSequence ReferencedPerformedProcedureStepSequence
ReferencedSOPInstanceMACSequence ReferencedStudySequence ReferringPhysicianAddress
ReferringPhysicianIdentificationSequence ReferringPhysicianName:Z ReferringPhysicianTelephoneNumbers
RegionOfResidence RelevantInformationSequence RequestAttributesSequence RequestedContrastAgent
RequestedProcedureCodeSequence RequestedProcedureComments RequestedProcedureDescription RequestedProcedureID
RequestedProcedureLocation RequestingAE RequestingPhysician RequestingPhysicianIdentificationSequence
RequestingService ResponsibleOrganization ResponsiblePerson ResponsiblePersonRole ResultsComments
ResultsDistributionListSequence ResultsIDIssuer ReviewDate ReviewTime ReviewerName ROIDescription
ROIGenerationDescription ROIInterpreter ROIName ROIObservationDescription ROIObservationLabel RTPlanDate
RTPlanDescription RTPlanLabel RTPlanName RTPlanTime SafePositionExitDate SafePositionExitTime
SafePositionReturnDate SafePositionReturnTime ScheduledAdmissionDate ScheduledAdmissionTime
ScheduledDischargeDate ScheduledDischargeTime ScheduledHumanPerformersSequence
ScheduledPatientInstitutionResidence ScheduledPerformingPhysicianIdentificationSequence
ScheduledPerformingPhysicianName ScheduledProcedureStepDescription ScheduledProcedureStepEndDate
ScheduledProcedureStepEndTime ScheduledProcedureStepID ScheduledProcedureStepLocation
ScheduledProcedureStepModificationDateTime ScheduledProcedureStepStartDate ScheduledProcedureStepStartTime
ScheduledStationAETitle ScheduledStationGeographicLocationCodeSequence ScheduledStationName
ScheduledStationNameCodeSequence ScheduledStudyLocation ScheduledStudyLocationAETitle SelectorDAValue
SelectorDTValue SelectorTMValue SendingApplicationEntityTitle SeriesDate SeriesDescription SeriesTime
ServiceEpisodeDescription ServiceEpisodeID SmokingStatus SourceApplicationEntityTitle SourceSerialNumber
SourceStrengthReferenceDate SourceStrengthReferenceTime SpecialNeeds SpecimenAccessionNumber
SpecimenDetailedDescription SpecimenIdentifier SpecimenShortDescription StartAcquisitionDateTime StationName
StructureSetDate StructureSetDescription StructureSetLabel StructureSetName StructureSetTime StudyComments
StudyDate:Z StudyDescription StudyID:Z StudyIDIssuer StudyTime:Z SubstanceAdministrationDateTime TextComments
TextString Time TimeOfLastCalibration TimeOfSecondaryCapture TimezoneOffsetFromUTC TopicAuthor TopicKeywords
TopicSubject TopicTitle TreatmentControlPointDate TreatmentControlPointTime TreatmentDate TreatmentTime
UniqueDeviceIdentifier VerifyingObserverIdentificationCodeSequence VerifyingObserverName
VerifyingObserverSequence VerifyingOrganization VisitComments XRayDetectorID XRaySourceID
"""
_UIDS = """
AffectedSOPInstanceUID FrameOfReferenceUID InstanceCreatorUID ManufacturerDeviceClassUID PatientSetupUID
ReferencedFrameOfReferenceUID ReferencedSOPInstanceUID RequestedSOPInstanceUID SeriesInstanceUID SOPInstanceUID
SpecimenUID StudyInstanceUID
"""


def _table() -> dict[str, str]:
    table = {}
    for item in _REMOVE.split():
        keyword, _, action = item.partition(":")
        table[keyword] = action or "X"
    table.update({keyword: "U" for keyword in _UIDS.split()})
    return table


BASIC_PROFILE: dict[str, str] = _table()

# Attributes of the profile that the SEG writer itself sets, to values of its own (not taken from
# the source): applied to the source before the SEG is derived, they are not removed from the SEG.
WRITER_OWN = frozenset({"ContentDate", "ContentTime", "SeriesDate", "SeriesTime", "InstanceCreationDate",
                        "InstanceCreationTime", "DeviceSerialNumber", "SeriesDescription", "ContentDescription",
                        "ContentCreatorName"})


def pseudonym(study_uid: str) -> str:
    """The patient ID of a de-identified SEG: derived from the (kept) study UID only, so SEGs of
    one study group together and nothing of the real ID can be recovered (a hash of a short ID
    could be reversed by trying every ID)."""
    return "USVLM-" + hashlib.sha256(study_uid.encode()).hexdigest()[:16].upper()


def apply_basic_profile(ds: Dataset, *, keep: Iterable[str] = ()) -> None:
    """Apply BASIC_PROFILE to `ds` in place, at every nesting level; `keep` names attributes
    left as they are. Private attributes are removed."""
    kept = set(keep)
    study_uid = str(ds.get("StudyInstanceUID", ""))
    pending = [ds]
    while pending:
        dataset = pending.pop()
        dataset.remove_private_tags()
        for tag in list(dataset.keys()):
            elem = dataset[tag]
            action = BASIC_PROFILE.get(elem.keyword)
            if elem.keyword in kept or action in (None, "U"):
                if elem.VR == "SQ":
                    pending.extend(elem.value)
            elif action == "X":
                del dataset[tag]
            elif action == "Z":
                elem.value = None if elem.VR == "SQ" else ""
            elif action == "D":
                elem.value = pseudonym(study_uid)
    _mark(ds)


def _mark(ds: Dataset) -> None:
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    codes = []
    for value, scheme, meaning in (PROFILE_CODE, RETAIN_UIDS_CODE):
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
        codes.append(code)
    ds.DeidentificationMethodCodeSequence = codes

